//! Loading rule files (a directory, or the shipped defaults) and checking each rule's SQL
//! against the session at start-up, so a bad rule fails with its file and line.

use std::path::{Path, PathBuf};

use super::{DEFAULTS, Rule, RuleError};

/// Loads every `*.toml` in `dir` (sorted by name); the shipped defaults when `dir` is `None`.
pub fn load(dir: Option<&Path>) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    match dir {
        None => {
            for (name, text) in DEFAULTS {
                rules.push(Rule::parse(&format!("(built-in) rules/{name}"), text)?);
            }
        }
        Some(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| RuleError {
                    file: dir.display().to_string(),
                    line: 0,
                    message: e.to_string(),
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                let name = f.display().to_string();
                let text = std::fs::read_to_string(&f).map_err(|e| RuleError {
                    file: name.clone(),
                    line: 0,
                    message: e.to_string(),
                })?;
                rules.push(Rule::parse(&name, &text)?);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &rules {
        if !seen.insert(r.id.clone()) {
            return Err(RuleError {
                file: r.file.clone(),
                line: 1,
                message: format!("a second rule with id {:?}", r.id),
            });
        }
    }
    Ok(rules)
}

/// Plans each rule's SQL against the session (tables, columns, types) so a bad rule fails at
/// start-up, with its file and line.
pub async fn check(
    ctx: &datafusion::prelude::SessionContext,
    rules: &[Rule],
) -> Result<(), RuleError> {
    use arrow_schema::DataType;
    if let Err(message) = crate::minutes::table::ensure_registered(ctx).await {
        let file = rules.first().map(|r| r.file.clone()).unwrap_or_default();
        return Err(RuleError {
            file,
            line: 1,
            message,
        });
    }
    for r in rules {
        let err = |message: String| RuleError {
            file: r.file.clone(),
            line: r.sql_line,
            message,
        };
        let sql = r.render(&r.params, "FALSE").map_err(err)?;
        let df = ctx
            .sql_with_options(&sql, carewatch_query::QueryEngine::options())
            .await
            .map_err(|e| err(first_line(&e.to_string())))?;
        let schema = df.schema().as_arrow().clone();
        for (name, ok) in [
            (
                "patient_id",
                &(|t: &DataType| {
                    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
                }) as &dyn Fn(&DataType) -> bool,
            ),
            ("t", &|t: &DataType| matches!(t, DataType::Timestamp(_, _))),
            ("hit", &|t: &DataType| matches!(t, DataType::Boolean)),
            ("value", &|t: &DataType| {
                t.is_numeric() || matches!(t, DataType::Null)
            }),
        ] {
            match schema.field_with_name(name) {
                Ok(f) if ok(f.data_type()) => {}
                Ok(f) => {
                    return Err(err(format!(
                        "column {name} has type {}, which is not what a rule returns",
                        f.data_type()
                    )));
                }
                Err(_) => {
                    return Err(err(format!(
                        "the SQL must return columns patient_id, t, hit, value; {name} is missing"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_owned()
}
