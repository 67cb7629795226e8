//! The vitals catalogue: one tested table of terminology.
//!
//! Each [`Vital`] fixes the LOINC code, the display, the canonical UCUM unit (the unit stored in
//! `observations.unit` and emitted in FHIR), the unit spellings we accept with their conversion
//! to the canonical unit, the names devices use for the measurement, and a plausible range (in
//! the canonical unit) outside which a reading is rejected as a device or transcription error.
//!
//! Codes follow the HL7 FHIR R4 vital-signs profiles where one exists (see
//! `shared/reference.md` §3). Steps, heart-rate variability and glucose are outside the vital
//! signs set; their codes are documented per entry.

use crate::reject::{Reason, Rejection, clip};

/// LOINC's code system URL.
pub const LOINC: &str = "http://loinc.org";
/// UCUM's code system URL.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// The blood-pressure panel code (components 8480-6 and 8462-4).
pub const BP_PANEL: &str = "85354-9";
/// Display of the blood-pressure panel.
pub const BP_PANEL_DISPLAY: &str = "Blood pressure panel with all children optional";

/// FHIR observation category of a vital.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `vital-signs` (HL7 vital-signs profile applies).
    VitalSigns,
    /// `activity` (steps).
    Activity,
    /// `laboratory` (glucose).
    Laboratory,
}

impl Category {
    /// The code in `http://terminology.hl7.org/CodeSystem/observation-category`.
    pub fn code(self) -> &'static str {
        match self {
            Category::VitalSigns => "vital-signs",
            Category::Activity => "activity",
            Category::Laboratory => "laboratory",
        }
    }
    /// The display for the category code.
    pub fn display(self) -> &'static str {
        match self {
            Category::VitalSigns => "Vital Signs",
            Category::Activity => "Activity",
            Category::Laboratory => "Laboratory",
        }
    }
}

/// How a unit converts to the canonical unit: `canonical = value * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    /// Multiplier.
    pub scale: f64,
    /// Added after scaling.
    pub offset: f64,
}

impl Conversion {
    /// The identity conversion.
    pub const ID: Conversion = Conversion {
        scale: 1.0,
        offset: 0.0,
    };
    /// A pure scale.
    pub const fn scale(scale: f64) -> Self {
        Conversion { scale, offset: 0.0 }
    }
    /// Converts a value into the canonical unit.
    pub fn apply(self, v: f64) -> f64 {
        v * self.scale + self.offset
    }
    /// Converts a canonical value back into this unit.
    pub fn invert(self, v: f64) -> f64 {
        (v - self.offset) / self.scale
    }
}

/// One accepted unit spelling. `ucum` marks a valid UCUM code (used as-is in FHIR input).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitAlias {
    /// The spelling as a device sends it (matched case-insensitively, spaces ignored).
    pub unit: &'static str,
    /// Its conversion to the canonical unit.
    pub conversion: Conversion,
}

const fn u(unit: &'static str, scale: f64) -> UnitAlias {
    UnitAlias {
        unit,
        conversion: Conversion::scale(scale),
    }
}

/// One measurable quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Vital {
    /// Our short name (`heart_rate`), used in carewatch JSON and rule files.
    pub key: &'static str,
    /// The LOINC code stored in `observations.code`.
    pub code: &'static str,
    /// The LOINC display.
    pub display: &'static str,
    /// Canonical UCUM code.
    pub unit: &'static str,
    /// Human unit text for FHIR `valueQuantity.unit`.
    pub unit_display: &'static str,
    /// Other codings emitted alongside the LOINC code (system, code, display).
    pub extra_codings: &'static [(&'static str, &'static str, &'static str)],
    /// Names by which devices and templates call this quantity (normalised: lowercase,
    /// no separators). The key and the LOINC code always match too.
    pub names: &'static [&'static str],
    /// Other codes that mean this quantity on input (e.g. 59408-5 for SpO2, MDC codes).
    pub input_codes: &'static [&'static str],
    /// Accepted units besides the canonical one, with conversions.
    pub units: &'static [UnitAlias],
    /// Plausible range in the canonical unit, inclusive.
    pub range: (f64, f64),
    /// FHIR category.
    pub category: Category,
    /// The panel this is a component of (blood pressure).
    pub panel: Option<&'static str>,
    /// HL7 vital-signs profile URL, when one applies.
    pub profile: Option<&'static str>,
}

const MDC: &str = "urn:iso:std:iso:11073:10101";

const PER_MIN: &[UnitAlias] = &[
    u("bpm", 1.0),
    u("beats/min", 1.0),
    u("beat/min", 1.0),
    u("{beats}/min", 1.0),
    u("{beat}/min", 1.0),
    u("count/min", 1.0),
    u("{count}/min", 1.0),
    u("1/min", 1.0),
    u("min-1", 1.0),
    u("beatsperminute", 1.0),
    u("beats/minute", 1.0),
    u("/s", 60.0),
    u("hz", 60.0),
];

const BREATHS: &[UnitAlias] = &[
    u("breaths/min", 1.0),
    u("{breaths}/min", 1.0),
    u("{breath}/min", 1.0),
    u("brpm", 1.0),
    u("rpm", 1.0),
    u("count/min", 1.0),
    u("1/min", 1.0),
    u("breaths/minute", 1.0),
];

const PERCENT: &[UnitAlias] = &[
    u("percent", 1.0),
    u("pct", 1.0),
    // A fraction (0..1) is scaled to percent.
    u("1", 100.0),
    u("{fraction}", 100.0),
    u("fraction", 100.0),
    u("{ratio}", 100.0),
    u("ratio", 100.0),
];

const TEMP: &[UnitAlias] = &[
    u("°c", 1.0),
    u("c", 1.0),
    u("degc", 1.0),
    u("celsius", 1.0),
    UnitAlias {
        unit: "[degf]",
        conversion: Conversion {
            scale: 5.0 / 9.0,
            offset: -32.0 * 5.0 / 9.0,
        },
    },
    UnitAlias {
        unit: "°f",
        conversion: Conversion {
            scale: 5.0 / 9.0,
            offset: -32.0 * 5.0 / 9.0,
        },
    },
    UnitAlias {
        unit: "f",
        conversion: Conversion {
            scale: 5.0 / 9.0,
            offset: -32.0 * 5.0 / 9.0,
        },
    },
    UnitAlias {
        unit: "degf",
        conversion: Conversion {
            scale: 5.0 / 9.0,
            offset: -32.0 * 5.0 / 9.0,
        },
    },
    UnitAlias {
        unit: "fahrenheit",
        conversion: Conversion {
            scale: 5.0 / 9.0,
            offset: -32.0 * 5.0 / 9.0,
        },
    },
    UnitAlias {
        unit: "k",
        conversion: Conversion {
            scale: 1.0,
            offset: -273.15,
        },
    },
    UnitAlias {
        unit: "kelvin",
        conversion: Conversion {
            scale: 1.0,
            offset: -273.15,
        },
    },
];

/// 1 kPa = 7.500 615 613 7 mm[Hg].
const KPA_TO_MMHG: f64 = 7.500_615_613_7;

const MMHG: &[UnitAlias] = &[
    u("mmhg", 1.0),
    u("mm hg", 1.0),
    u("torr", 1.0),
    u("kpa", KPA_TO_MMHG),
    u("cm[h2o]", 0.735_559_1),
];

const KG: &[UnitAlias] = &[
    u("kilogram", 1.0),
    u("kilograms", 1.0),
    u("kgs", 1.0),
    u("g", 0.001),
    u("gram", 0.001),
    u("grams", 0.001),
    u("[lb_av]", 0.453_592_37),
    u("lb", 0.453_592_37),
    u("lbs", 0.453_592_37),
    u("pound", 0.453_592_37),
    u("pounds", 0.453_592_37),
    u("[oz_av]", 0.028_349_523_125),
];

const STEPS: &[UnitAlias] = &[
    u("steps", 1.0),
    u("step", 1.0),
    u("{step}", 1.0),
    u("count", 1.0),
    u("{count}", 1.0),
    u("1", 1.0),
];

const MS: &[UnitAlias] = &[
    u("msec", 1.0),
    u("milliseconds", 1.0),
    u("millisecond", 1.0),
    u("s", 1000.0),
    u("sec", 1000.0),
];

/// mg/dL per mmol/L of glucose (molar mass 180.156 g/mol).
const GLUCOSE_MMOL_TO_MGDL: f64 = 18.0156;

const MGDL: &[UnitAlias] = &[
    u("mg/dl", 1.0),
    u("mmol/l", GLUCOSE_MMOL_TO_MGDL),
    u("g/l", 100.0),
];

const CM: &[UnitAlias] = &[
    u("m", 100.0),
    u("mm", 0.1),
    u("[in_i]", 2.54),
    u("in", 2.54),
    u("inch", 2.54),
    u("inches", 2.54),
    u("[ft_i]", 30.48),
    u("ft", 30.48),
];

const KGM2: &[UnitAlias] = &[u("kg/m^2", 1.0), u("kg/m²", 1.0)];

/// The catalogue. Order is stable; tests pin it.
pub static VITALS: &[Vital] = &[
    Vital {
        key: "heart_rate",
        code: "8867-4",
        display: "Heart rate",
        unit: "/min",
        unit_display: "beats/minute",
        extra_codings: &[],
        names: &[
            "heartrate",
            "hr",
            "pulse",
            "pulserate",
            "heartratebpm",
            "bpm",
        ],
        input_codes: &["149530", "147842"],
        units: PER_MIN,
        range: (20.0, 300.0),
        category: Category::VitalSigns,
        panel: None,
        profile: Some("http://hl7.org/fhir/StructureDefinition/heartrate"),
    },
    Vital {
        key: "spo2",
        code: "2708-6",
        display: "Oxygen saturation in Arterial blood",
        unit: "%",
        unit_display: "%",
        extra_codings: &[
            (
                LOINC,
                "59408-5",
                "Oxygen saturation in Arterial blood by Pulse oximetry",
            ),
            (MDC, "150456", "MDC_PULS_OXIM_SAT_O2"),
        ],
        names: &[
            "spo2",
            "oxygensaturation",
            "o2sat",
            "sao2",
            "oxygen",
            "saturation",
            "sato2",
        ],
        input_codes: &["59408-5", "150456", "20564-1"],
        units: PERCENT,
        range: (50.0, 100.0),
        category: Category::VitalSigns,
        panel: None,
        profile: Some("http://hl7.org/fhir/StructureDefinition/oxygensat"),
    },
    Vital {
        key: "respiratory_rate",
        code: "9279-1",
        display: "Respiratory rate",
        unit: "/min",
        unit_display: "breaths/minute",
        extra_codings: &[],
        names: &[
            "respiratoryrate",
            "resprate",
            "rr",
            "respiration",
            "breathingrate",
            "rrate",
        ],
        input_codes: &["151562"],
        units: BREATHS,
        range: (2.0, 80.0),
        category: Category::VitalSigns,
        panel: None,
        profile: Some("http://hl7.org/fhir/StructureDefinition/resprate"),
    },
    Vital {
        key: "body_temperature",
        code: "8310-5",
        display: "Body temperature",
        unit: "Cel",
        unit_display: "C",
        extra_codings: &[],
        names: &[
            "bodytemperature",
            "temperature",
            "temp",
            "bodytemp",
            "skintemperature",
        ],
        input_codes: &["150364"],
        units: TEMP,
        range: (25.0, 45.0),
        category: Category::VitalSigns,
        panel: None,
        profile: Some("http://hl7.org/fhir/StructureDefinition/bodytemp"),
    },
    Vital {
        key: "systolic",
        code: "8480-6",
        display: "Systolic blood pressure",
        unit: "mm[Hg]",
        unit_display: "mmHg",
        extra_codings: &[],
        names: &[
            "systolic",
            "systolicbloodpressure",
            "bpsystolic",
            "sys",
            "sbp",
            "systolicbp",
        ],
        input_codes: &["150021"],
        units: MMHG,
        range: (40.0, 300.0),
        category: Category::VitalSigns,
        panel: Some(BP_PANEL),
        profile: Some("http://hl7.org/fhir/StructureDefinition/bp"),
    },
    Vital {
        key: "diastolic",
        code: "8462-4",
        display: "Diastolic blood pressure",
        unit: "mm[Hg]",
        unit_display: "mmHg",
        extra_codings: &[],
        names: &[
            "diastolic",
            "diastolicbloodpressure",
            "bpdiastolic",
            "dia",
            "dbp",
            "diastolicbp",
        ],
        input_codes: &["150022"],
        units: MMHG,
        range: (20.0, 200.0),
        category: Category::VitalSigns,
        panel: Some(BP_PANEL),
        profile: Some("http://hl7.org/fhir/StructureDefinition/bp"),
    },
    Vital {
        key: "body_weight",
        code: "29463-7",
        display: "Body weight",
        unit: "kg",
        unit_display: "kg",
        extra_codings: &[],
        names: &["bodyweight", "weight", "bodymass"],
        input_codes: &["188736"],
        units: KG,
        range: (0.5, 500.0),
        category: Category::VitalSigns,
        panel: None,
        profile: Some("http://hl7.org/fhir/StructureDefinition/bodyweight"),
    },
    Vital {
        key: "body_height",
        code: "8302-2",
        display: "Body height",
        unit: "cm",
        unit_display: "cm",
        extra_codings: &[],
        names: &["bodyheight", "height"],
        input_codes: &[],
        units: CM,
        range: (20.0, 280.0),
        category: Category::VitalSigns,
        panel: None,
        profile: Some("http://hl7.org/fhir/StructureDefinition/bodyheight"),
    },
    Vital {
        key: "bmi",
        code: "39156-5",
        display: "Body mass index (BMI) [Ratio]",
        unit: "kg/m2",
        unit_display: "kg/m2",
        extra_codings: &[],
        names: &["bmi", "bodymassindex"],
        input_codes: &[],
        units: KGM2,
        range: (5.0, 150.0),
        category: Category::VitalSigns,
        panel: None,
        profile: Some("http://hl7.org/fhir/StructureDefinition/bmi"),
    },
    // Steps in an arbitrary interval. LOINC 55423-8 "Number of steps in unspecified time
    // Pedometer"; 41950-7 is the 24-hour total used by the Physical Activity IG. Devices report
    // steps per sample interval, so 55423-8 is the stored code; 41950-7 is accepted on input.
    Vital {
        key: "steps",
        code: "55423-8",
        display: "Number of steps in unspecified time Pedometer",
        unit: "{steps}",
        unit_display: "steps",
        extra_codings: &[],
        names: &["steps", "stepcount", "step", "stepsdelta", "numberofsteps"],
        input_codes: &["41950-7"],
        units: STEPS,
        range: (0.0, 200_000.0),
        category: Category::Activity,
        panel: None,
        profile: None,
    },
    // Heart-rate variability, SDNN. LOINC 80404-7 "R-R interval.standard deviation (Heart
    // rate variability)"; the code is in common use (Apple Health export, MedTech samples).
    Vital {
        key: "hrv",
        code: "80404-7",
        display: "R-R interval.standard deviation (Heart rate variability)",
        unit: "ms",
        unit_display: "ms",
        extra_codings: &[],
        names: &["hrv", "heartratevariability", "hrvsdnn", "sdnn", "rrsdnn"],
        input_codes: &[],
        units: MS,
        range: (1.0, 1000.0),
        category: Category::VitalSigns,
        panel: None,
        profile: None,
    },
    // Blood glucose by meter (fingerstick): LOINC 2339-0 "Glucose [Mass/volume] in Blood".
    Vital {
        key: "blood_glucose",
        code: "2339-0",
        display: "Glucose [Mass/volume] in Blood",
        unit: "mg/dL",
        unit_display: "mg/dL",
        extra_codings: &[],
        names: &["bloodglucose", "glucose", "bg", "glucoselevel"],
        input_codes: &["15074-8", "41653-7", "160184", "160368"],
        units: MGDL,
        range: (10.0, 1500.0),
        category: Category::Laboratory,
        panel: None,
        profile: None,
    },
    // Continuous glucose monitor: LOINC 99504-3 "Glucose [Mass/volume] in Interstitial fluid"
    // (HL7 CGM IG 1.0.0); 105272-9 (molar form) is accepted on input and converted.
    Vital {
        key: "cgm_glucose",
        code: "99504-3",
        display: "Glucose [Mass/volume] in Interstitial fluid",
        unit: "mg/dL",
        unit_display: "mg/dL",
        extra_codings: &[],
        names: &["cgmglucose", "interstitialglucose", "cgm", "sensorglucose"],
        input_codes: &["105272-9"],
        units: MGDL,
        range: (10.0, 1500.0),
        category: Category::Laboratory,
        panel: None,
        profile: None,
    },
];

/// Lowercases and strips separators (`_ - . space`) so `heartRate`, `heart_rate` and
/// `Heart-Rate` are one name.
pub fn name_key(name: &str) -> String {
    name_chars(name).collect()
}

/// The characters of [`name_key`], without building the string (lookups run per reading).
fn name_chars(name: &str) -> impl Iterator<Item = char> + '_ {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' ' | '.'))
        .flat_map(char::to_lowercase)
}

/// Whether `name`'s key is `key` (a key already: lowercase, no separators).
pub fn is_key(name: &str, key: &str) -> bool {
    name == key || name_chars(name).eq(key.chars())
}

/// Looks up a vital by LOINC code (also input-only codes such as 59408-5 or MDC codes).
pub fn by_code(code: &str) -> Option<&'static Vital> {
    let code = code.trim();
    VITALS
        .iter()
        .find(|v| v.code == code || v.input_codes.contains(&code))
}

/// Looks up a vital by a device's name for it (`heartRate`, `spo2`, `bp_systolic`, …) or code.
pub fn by_name(name: &str) -> Option<&'static Vital> {
    if let Some(v) = by_code(name) {
        return Some(v);
    }
    VITALS
        .iter()
        .find(|v| name_chars(name).eq(name_chars(v.key)) || v.names.iter().any(|n| is_key(name, n)))
}

/// Looks up by our key (`heart_rate`).
pub fn by_key(key: &str) -> Option<&'static Vital> {
    VITALS.iter().find(|v| v.key == key)
}

/// A unit's spelling without white space, lowercased (compared, never built).
fn unit_chars(unit: &str) -> impl Iterator<Item = char> + '_ {
    unit.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
}

fn same_unit(a: &str, b: &str) -> bool {
    a == b || unit_chars(a).eq(unit_chars(b))
}

impl Vital {
    /// The conversion for a unit spelling, or `None` when it is not one we accept.
    /// An empty unit means the canonical unit.
    pub fn conversion(&self, unit: &str) -> Option<Conversion> {
        if unit_chars(unit).next().is_none() || same_unit(unit, self.unit) {
            return Some(Conversion::ID);
        }
        self.units
            .iter()
            .find(|a| same_unit(unit, a.unit))
            .map(|a| a.conversion)
    }

    /// Converts `value` in `unit` (None: canonical) to the canonical unit and checks the
    /// plausible range. `field` names the value in messages.
    pub fn canonical(&self, value: f64, unit: Option<&str>, field: &str) -> Result<f64, Rejection> {
        if !value.is_finite() {
            return Err(Rejection::new(
                Reason::WrongType,
                format!("field `{field}` must be a finite number, got {value}"),
            ));
        }
        let conv = match unit {
            None => Conversion::ID,
            Some(u) => self.conversion(u).ok_or_else(|| {
                Rejection::new(
                    Reason::UnitNotConvertible,
                    format!(
                        "unit {} is not convertible to {} for {} ({})",
                        clip(u),
                        self.unit,
                        self.key,
                        self.code
                    ),
                )
            })?,
        };
        let v = conv.apply(value);
        // Round away float noise from conversions (e.g. 98.6 °F -> 37.0 °C), keeping 6 decimals.
        let v = if conv == Conversion::ID {
            v
        } else {
            (v * 1e6).round() / 1e6
        };
        let (lo, hi) = self.range;
        if !(lo..=hi).contains(&v) {
            let shown = match unit {
                Some(u) if conv != Conversion::ID => format!("{value} {u} (= {v} {})", self.unit),
                _ => format!("{v} {}", self.unit),
            };
            return Err(Rejection::new(
                Reason::OutOfRange,
                format!(
                    "field `{field}`: {} value {shown} is outside the plausible range {lo}..={hi} {}",
                    self.key, self.unit
                ),
            ));
        }
        Ok(v)
    }

    /// True for the two blood-pressure components.
    pub fn is_bp_component(&self) -> bool {
        self.panel == Some(BP_PANEL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_unambiguous() {
        let mut codes = std::collections::HashSet::new();
        let mut names = std::collections::HashMap::new();
        for v in VITALS {
            assert!(codes.insert(v.code), "code {} twice", v.code);
            for c in v.input_codes {
                assert!(codes.insert(c), "input code {c} twice");
            }
            let own: std::collections::BTreeSet<String> = v
                .names
                .iter()
                .copied()
                .chain([v.key])
                .map(name_key)
                .collect();
            for k in own {
                if let Some(prev) = names.insert(k.clone(), v.key) {
                    panic!("name {k} used by {prev} and {}", v.key);
                }
            }
            assert!(v.range.0 < v.range.1);
            assert_eq!(v.conversion(v.unit), Some(Conversion::ID));
        }
    }

    #[test]
    fn profile_codes_and_units_are_the_hl7_ones() {
        let expect = [
            ("heart_rate", "8867-4", "/min"),
            ("spo2", "2708-6", "%"),
            ("respiratory_rate", "9279-1", "/min"),
            ("body_temperature", "8310-5", "Cel"),
            ("systolic", "8480-6", "mm[Hg]"),
            ("diastolic", "8462-4", "mm[Hg]"),
            ("body_weight", "29463-7", "kg"),
            ("body_height", "8302-2", "cm"),
            ("bmi", "39156-5", "kg/m2"),
            ("steps", "55423-8", "{steps}"),
            ("hrv", "80404-7", "ms"),
            ("blood_glucose", "2339-0", "mg/dL"),
            ("cgm_glucose", "99504-3", "mg/dL"),
        ];
        assert_eq!(VITALS.len(), expect.len());
        for (key, code, unit) in expect {
            let v = by_key(key).expect(key);
            assert_eq!((v.code, v.unit), (code, unit), "{key}");
        }
    }

    #[test]
    fn lookups_by_name_and_code() {
        assert_eq!(by_name("heartRate").map(|v| v.key), Some("heart_rate"));
        assert_eq!(by_name("Heart-Rate").map(|v| v.key), Some("heart_rate"));
        assert_eq!(by_name("bp_systolic").map(|v| v.key), Some("systolic"));
        assert_eq!(by_name("59408-5").map(|v| v.key), Some("spo2"));
        assert_eq!(by_name("150456").map(|v| v.key), Some("spo2"));
        assert_eq!(by_name("deviceWorn"), None);
    }

    #[test]
    fn conversions() {
        let t = by_key("body_temperature").expect("temp");
        assert_eq!(t.canonical(98.6, Some("[degF]"), "value"), Ok(37.0));
        assert_eq!(t.canonical(310.15, Some("K"), "value"), Ok(37.0));
        let w = by_key("body_weight").expect("weight");
        assert_eq!(w.canonical(185.0, Some("lb"), "value"), Ok(83.914588));
        let bp = by_key("systolic").expect("sys");
        assert_eq!(bp.canonical(16.0, Some("kPa"), "value"), Ok(120.009850));
        let s = by_key("spo2").expect("spo2");
        assert_eq!(s.canonical(0.97, Some("1"), "value"), Ok(97.0));
        let hr = by_key("heart_rate").expect("hr");
        assert_eq!(hr.canonical(72.0, Some("count/min"), "value"), Ok(72.0));
        assert_eq!(hr.canonical(72.0, Some("bpm"), "value"), Ok(72.0));
        let g = by_key("blood_glucose").expect("bg");
        assert_eq!(g.canonical(5.5, Some("mmol/L"), "value"), Ok(99.0858));
    }

    #[test]
    fn bad_unit_and_range_messages() {
        let hr = by_key("heart_rate").expect("hr");
        let e = hr.canonical(72.0, Some("mmHg"), "value").unwrap_err();
        assert_eq!(e.reason, Reason::UnitNotConvertible);
        assert!(e.message.contains("\"mmHg\""), "{}", e.message);
        let e = hr.canonical(400.0, None, "heart_rate").unwrap_err();
        assert_eq!(e.reason, Reason::OutOfRange);
        assert_eq!(
            e.message,
            "field `heart_rate`: heart_rate value 400 /min is outside the plausible range 20..=300 /min"
        );
        let e = hr.canonical(f64::NAN, None, "value").unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
    }
}
