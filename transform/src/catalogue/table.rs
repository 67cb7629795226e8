//! The catalogue's data: the unit spellings each vital accepts and the vitals themselves
//! ([`VITALS`]), apart from the lookups in `catalogue.rs`.

use super::{BP_PANEL, Category, Conversion, LOINC, UnitAlias, Vital, u};

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
