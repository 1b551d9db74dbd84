//! Checks of a training stage's numeric params, each failing with the param's name, its value and
//! what it must be, before any work (a bad value would otherwise panic deep in a tensor op, or
//! train nothing and publish the untrained model as a result). The engine runs these checks when
//! it reads a workflow, so the error points at the param's line.

/// A param whose value no training can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParam {
    /// The param's name.
    pub param: &'static str,
    /// What is wrong, the name and value included.
    pub message: String,
}

impl std::fmt::Display for BadParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BadParam {}

/// A [`BadParam`] for `param`.
pub fn bad(param: &'static str, message: String) -> BadParam {
    BadParam { param, message }
}

/// `value` must be at least 1.
pub fn at_least_one(name: &'static str, value: usize) -> Result<(), BadParam> {
    if value == 0 {
        return Err(bad(name, format!("{name} 0 must be at least 1")));
    }
    Ok(())
}

/// `value` must be a finite number above 0.
pub fn positive(name: &'static str, value: f64) -> Result<(), BadParam> {
    if !(value.is_finite() && value > 0.0) {
        return Err(bad(
            name,
            format!("{name} {value} must be a number above 0"),
        ));
    }
    Ok(())
}

/// `value` must be a finite number of at least 0.
pub fn non_negative(name: &'static str, value: f64) -> Result<(), BadParam> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(bad(
            name,
            format!("{name} {value} must be a number of at least 0"),
        ));
    }
    Ok(())
}

/// `value` must be a share in [0, 1): a dropout, a held-out share, a warm-up share.
pub fn share_below_one(name: &'static str, value: f64) -> Result<(), BadParam> {
    if !(0.0..1.0).contains(&value) {
        return Err(bad(
            name,
            format!("{name} {value} is not a share in [0, 1)"),
        ));
    }
    Ok(())
}

/// `value` must be a share in (0, 1]: a share that has to choose something.
pub fn share_above_zero(name: &'static str, value: f64) -> Result<(), BadParam> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(bad(
            name,
            format!("{name} {value} is not a share in (0, 1]"),
        ));
    }
    Ok(())
}

/// An optional count (`max_steps`, `checkpoint_every`) must be at least 1 where given.
pub fn optional_at_least_one(name: &'static str, value: Option<u64>) -> Result<(), BadParam> {
    match value {
        Some(0) => Err(bad(
            name,
            format!("{name} 0 must be at least 1 (leave it out for no limit)"),
        )),
        _ => Ok(()),
    }
}

/// Flash attention runs in bf16 only: `attention: flash` needs `precision: bf16`.
pub fn flash_needs_bf16(
    attention: super::roberta::Attention,
    precision: super::roberta::Precision,
) -> Result<(), BadParam> {
    use super::flash_attention::takes_dtype;
    if attention == super::roberta::Attention::Flash && !takes_dtype(precision.dtype()) {
        return Err(bad(
            "attention",
            "attention flash: flash attention needs precision bf16 (its kernels run bf16 \
             tensor-core products)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_names_the_param_and_the_value() {
        assert_eq!(
            at_least_one("epochs", 0).unwrap_err().message,
            "epochs 0 must be at least 1"
        );
        assert!(at_least_one("epochs", 1).is_ok());
        assert_eq!(
            positive("lr", -1.0).unwrap_err().message,
            "lr -1 must be a number above 0"
        );
        assert!(positive("lr", 0.0).is_err());
        assert!(positive("lr", f64::NAN).is_err());
        assert!(positive("lr", f64::INFINITY).is_err());
        assert!(positive("lr", 1e-4).is_ok());
        assert!(non_negative("clip_norm", 0.0).is_ok());
        assert!(non_negative("clip_norm", -0.5).is_err());
        assert_eq!(
            share_below_one("dropout", 1.0).unwrap_err(),
            bad("dropout", "dropout 1 is not a share in [0, 1)".into())
        );
        assert!(share_below_one("dropout", 0.0).is_ok());
        assert!(share_below_one("dropout", f64::NAN).is_err());
        assert!(share_above_zero("mask_prob", 0.0).is_err());
        assert!(share_above_zero("mask_prob", 1.5).is_err());
        assert!(share_above_zero("mask_prob", 1.0).is_ok());
        assert!(optional_at_least_one("max_steps", Some(0)).is_err());
        assert!(optional_at_least_one("max_steps", None).is_ok());
        assert!(optional_at_least_one("max_steps", Some(3)).is_ok());
        use crate::model::roberta::{Attention, Precision};
        let e = flash_needs_bf16(Attention::Flash, Precision::F32).unwrap_err();
        assert_eq!(e.param, "attention");
        assert!(flash_needs_bf16(Attention::Flash, Precision::Bf16).is_ok());
        assert!(flash_needs_bf16(Attention::Products, Precision::F32).is_ok());
    }
}
