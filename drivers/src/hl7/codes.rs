//! MDC code tables for HL7 PCD-01 (device-protocols.md §0 warning 5, §5.1, §5.2).
//!
//! - [`canonical_code`]: monitors disagree on MDC codes for the same quantity, so values are
//!   keyed on a canonical numeric code. The canonical code is the PHD/IHE one; vendor
//!   variants are aliases. The code the device sent is kept as `reported_code`.
//! - [`ucum_for_mdc_unit`]: MDC unit codes to UCUM. Units not in the table fall back to the
//!   MDC code itself (the PHD IG's rule), decided by the caller.

/// (vendor code, canonical code, note).
pub const CODE_ALIASES: &[(u32, u32, &str)] = &[
    (
        150488,
        150448,
        "MDC_BLD_PERF_INDEX (Mindray) = MDC_PULS_OXIM_PERF_REL",
    ),
    (
        150301,
        150021,
        "MDC_PRESS_CUFF_SYS (Mindray) = MDC_PRESS_BLD_NONINV_SYS",
    ),
    (
        150302,
        150022,
        "MDC_PRESS_CUFF_DIA (Mindray) = MDC_PRESS_BLD_NONINV_DIA",
    ),
    (
        150303,
        150023,
        "MDC_PRESS_CUFF_MEAN (Mindray) = MDC_PRESS_BLD_NONINV_MEAN",
    ),
    (188496, 188452, "MDC_TEMP_AXIL (Mindray) = MDC_TEMP_AXILLA"),
];

/// (MDC unit code, reference ID, UCUM code).
pub const UNITS: &[(u32, &str, &str)] = &[
    (262688, "MDC_DIM_PERCENT", "%"),
    (264864, "MDC_DIM_BEAT_PER_MIN", "/min"),
    (264928, "MDC_DIM_RESP_PER_MIN", "/min"),
    (266016, "MDC_DIM_MMHG", "mm[Hg]"),
    (265987, "MDC_DIM_KILO_PASCAL", "kPa"),
    (268192, "MDC_DIM_DEGC", "Cel"),
    (266560, "MDC_DIM_FAHR", "[degF]"),
    (263875, "MDC_DIM_KILO_G", "kg"),
    (263904, "MDC_DIM_LB", "[lb_av]"),
    (263441, "MDC_DIM_CENTI_M", "cm"),
    (263520, "MDC_DIM_INCH", "[in_i]"),
    (264096, "MDC_DIM_KG_PER_M_SQ", "kg/m2"),
    (264274, "MDC_DIM_MILLI_G_PER_DL", "mg/dL"),
    (266866, "MDC_DIM_MILLI_MOLE_PER_L", "mmol/L"),
    (262656, "MDC_DIM_DIMLESS", "1"),
];

/// The canonical code for a reported MDC code (itself when it has no alias).
pub fn canonical_code(code: u32) -> u32 {
    CODE_ALIASES
        .iter()
        .find(|(vendor, _, _)| *vendor == code)
        .map_or(code, |(_, canonical, _)| *canonical)
}

/// UCUM code for an MDC unit code, if the table knows it.
pub fn ucum_for_mdc_unit(code: u32) -> Option<&'static str> {
    UNITS.iter().find(|u| u.0 == code).map(|u| u.2)
}

/// UCUM code for an MDC unit reference ID (`MDC_DIM_PERCENT`), if the table knows it.
pub fn ucum_for_mdc_ref_id(ref_id: &str) -> Option<&'static str> {
    UNITS.iter().find(|u| u.1 == ref_id).map(|u| u.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_point_at_codes_that_are_not_aliases() {
        for (vendor, canonical, _) in CODE_ALIASES {
            assert_ne!(vendor, canonical);
            assert_eq!(canonical_code(*canonical), *canonical);
            assert_eq!(canonical_code(*vendor), *canonical);
        }
        assert_eq!(canonical_code(150456), 150456);
    }

    #[test]
    fn unit_codes_follow_the_partition_rule() {
        // Unit code = 4 × 65536 + term (DIM partition).
        for (code, _, _) in UNITS {
            assert_eq!(code / 65536, 4, "{code}");
        }
        assert_eq!(ucum_for_mdc_unit(266016), Some("mm[Hg]"));
        assert_eq!(ucum_for_mdc_ref_id("MDC_DIM_DEGC"), Some("Cel"));
        assert_eq!(ucum_for_mdc_unit(1), None);
    }
}
