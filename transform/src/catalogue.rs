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

mod table;
pub use table::VITALS;

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
