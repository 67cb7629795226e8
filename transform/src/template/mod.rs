//! placeholder
use serde_json::Value;
use crate::normalise::{Context, Outcome};
/// Templates.
#[derive(Debug)]
pub struct Templates;
impl Templates {
    /// Normalise.
    pub fn normalise(&self, _v: &Value, _i: Option<usize>, _c: &Context<'_>, _o: &mut Outcome) {}
}
