//! `${...}` templates in workflow values: `${vars.x}`, `${vars.x.y}`, `${item}` and `${item.field}`.
//!
//! A string that is exactly one template takes the referenced value with its type (a list stays a
//! list, a number a number); a template inside a longer string is replaced by the scalar's text.
//! `$${` writes a literal `${`.

use serde_yaml::{Mapping, Value};

use super::spans::Seg;

/// What templates can refer to.
pub struct Scope<'a> {
    /// The workflow's `vars:`.
    pub vars: &'a Mapping,
    /// The current `foreach` item, inside a fan-out stage.
    pub item: Option<&'a Value>,
}

/// A template that could not be resolved, with the path of the value that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstError {
    /// Path of the offending value, relative to the value that was substituted.
    pub path: Vec<Seg>,
    /// What is wrong.
    pub message: String,
}

/// Substitutes every template in `value`, collecting problems rather than stopping at the first.
pub fn substitute(value: &Value, scope: &Scope, errors: &mut Vec<SubstError>) -> Value {
    let mut path = Vec::new();
    walk(value, scope, &mut path, errors)
}

fn walk(value: &Value, scope: &Scope, path: &mut Vec<Seg>, errors: &mut Vec<SubstError>) -> Value {
    match value {
        Value::String(s) => match expand(s, scope) {
            Ok(v) => v,
            Err(message) => {
                errors.push(SubstError {
                    path: path.clone(),
                    message,
                });
                value.clone()
            }
        },
        Value::Sequence(items) => Value::Sequence(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    path.push(Seg::Index(i));
                    let out = walk(v, scope, path, errors);
                    path.pop();
                    out
                })
                .collect(),
        ),
        Value::Mapping(map) => Value::Mapping(
            map.iter()
                .map(|(k, v)| {
                    path.push(Seg::Key(key_text(k)));
                    let out = walk(v, scope, path, errors);
                    path.pop();
                    (k.clone(), out)
                })
                .collect(),
        ),
        Value::Tagged(t) => walk(&t.value, scope, path, errors),
        other => other.clone(),
    }
}

/// The text of a mapping key, as used in paths and messages.
pub fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => scalar_text(other).unwrap_or_else(|| "?".to_string()),
    }
}

/// The text of a scalar (string, number, bool, null); `None` for lists and mappings.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Tagged(t) => scalar_text(&t.value),
        Value::Sequence(_) | Value::Mapping(_) => None,
    }
}

fn expand(s: &str, scope: &Scope) -> Result<Value, String> {
    if !s.contains("${") {
        return Ok(Value::String(s.to_string()));
    }
    // A whole-string template keeps the type of what it names.
    if let Some(expr) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !expr.contains("${") && !expr.contains('}') && !s.starts_with("$${") {
            return lookup(expr.trim(), scope).cloned();
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed template in {s:?}: `${{` without `}}`"))?;
        let expr = after[..end].trim();
        let value = lookup(expr, scope)?;
        let text = scalar_text(value).ok_or_else(|| {
            format!(
                "`${{{expr}}}` is a list or mapping and cannot be placed inside the string {s:?}"
            )
        })?;
        out.push_str(&text);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn lookup<'a>(expr: &str, scope: &'a Scope) -> Result<&'a Value, String> {
    let mut parts = expr.split('.');
    let head = parts.next().unwrap_or_default();
    let mut value: &Value = match head {
        "vars" => {
            let name = parts
                .next()
                .ok_or_else(|| "`${vars}` needs a name: `${vars.NAME}`".to_string())?;
            scope.vars.get(name).ok_or_else(|| {
                let known: Vec<String> = scope.vars.keys().map(key_text).collect();
                if known.is_empty() {
                    format!("`${{{expr}}}`: the workflow has no `vars:` block")
                } else {
                    format!(
                        "`${{{expr}}}`: no var named `{name}` (vars: {})",
                        known.join(", ")
                    )
                }
            })?
        }
        "item" => scope
            .item
            .ok_or_else(|| format!("`${{{expr}}}` is only available in a stage with `foreach`"))?,
        other => {
            return Err(format!(
                "`${{{expr}}}`: unknown name `{other}` (use `vars.NAME`, `item` or `item.FIELD`)"
            ))
        }
    };
    for field in parts {
        value = match value {
            Value::Mapping(m) => m.get(field),
            Value::Sequence(s) => field.parse::<usize>().ok().and_then(|i| s.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("`${{{expr}}}`: no field `{field}`"))?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn whole_templates_keep_types_and_inline_ones_make_text() {
        let vars = yaml("k: [2, 3]\nroot: /data\nn: 5")
            .as_mapping()
            .unwrap()
            .clone();
        let item = yaml("{name: ath, chr: 1}");
        let scope = Scope {
            vars: &vars,
            item: Some(&item),
        };
        let mut errs = Vec::new();
        let v = substitute(
            &yaml("{k: '${vars.k}', path: '${vars.root}/${item.name}_${item.chr}.fa', n: '${vars.n}', lit: 'cost $${x}'}"),
            &scope,
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            v,
            yaml("{k: [2, 3], path: /data/ath_1.fa, n: 5, lit: 'cost ${x}'}")
        );
    }

    #[test]
    fn reports_unknown_names_with_their_path() {
        let vars = Mapping::new();
        let scope = Scope {
            vars: &vars,
            item: None,
        };
        let mut errs = Vec::new();
        substitute(
            &yaml("{a: [x, '${vars.nope}'], b: '${item}', c: 'x${vars.y'}"),
            &scope,
            &mut errs,
        );
        assert_eq!(errs.len(), 3);
        assert_eq!(errs[0].path, vec![Seg::key("a"), Seg::Index(1)]);
        assert!(errs[0].message.contains("no `vars:` block"));
        assert!(errs[1]
            .message
            .contains("only available in a stage with `foreach`"));
        assert!(errs[2].message.contains("unclosed"));
    }
}
