//! The document router: YAML files and directories in, each document sent
//! by its `kind` to the stage that owns it (`TracingPolicy*` to `policy`,
//! `BrainRule` to `brain`, Cilium's kinds set aside), with every error tied
//! to its file (or source) and field. `policy` and `brain` never read each
//! other's documents.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::{Policy, PolicyError};

/// What a set of files yielded.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub policies: Vec<(PathBuf, Policy)>,
    /// Brain rules (`BrainRule` documents).
    pub rules: Vec<(PathBuf, crate::brain::Rule)>,
    /// Files or documents not loaded, and why: meant for another consumer
    /// (Cilium network policies), or waiting for variables the daemon was not
    /// given.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Values for `${NAME}` placeholders in policy files, from daemon
/// configuration (for example `PODCIDR` from `--pod-cidr`), the way
/// Tetragon's quickstart fills its policies with envsubst.
pub type Vars = std::collections::BTreeMap<String, String>;

/// The names of every `${NAME}` placeholder in `text`.
fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !out.contains(&name)
        {
            out.push(name);
        }
        rest = &after[end..];
    }
    out
}

/// Kinds that may share `policies/` but are enforced by Cilium, not here.
const CILIUM_KINDS: &[&str] = &["CiliumClusterwideNetworkPolicy", "CiliumNetworkPolicy"];

fn error(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        file: file.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Loads every document of one file, after filling its placeholders. A file
/// whose placeholders are not all given is skipped, and says which it needs.
pub fn load_file(file: &Path, vars: &Vars, into: &mut Loaded) -> Result<(), PolicyError> {
    let text = std::fs::read_to_string(file).map_err(|e| error(file, "(file)", e.to_string()))?;
    load_text(file, &text, vars, into)
}

/// Loads the documents of `text`, named `file` in errors (a path, or the
/// name a policy came under through the API). Nothing is added to `into`
/// unless every document loads.
pub fn load_text(
    file: &Path,
    text: &str,
    vars: &Vars,
    into: &mut Loaded,
) -> Result<(), PolicyError> {
    let mut one = Loaded::default();
    read_documents(file, text, vars, &mut one)?;
    into.policies.extend(one.policies);
    into.rules.extend(one.rules);
    into.skipped.extend(one.skipped);
    Ok(())
}

fn read_documents(
    file: &Path,
    text: &str,
    vars: &Vars,
    into: &mut Loaded,
) -> Result<(), PolicyError> {
    let mut text = text.to_string();
    let names: Vec<String> = placeholders(&text).into_iter().map(String::from).collect();
    let missing: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !vars.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        let reason = format!("needs the variables {}", missing.join(", "));
        into.skipped.push((file.to_path_buf(), reason));
        return Ok(());
    }
    for name in &names {
        text = text.replace(&format!("${{{name}}}"), &vars[name]);
    }
    for (doc_index, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| error(file, "(yaml)", e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let prefix = if doc_index == 0 {
            String::new()
        } else {
            format!("document {doc_index}: ")
        };
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        if CILIUM_KINDS.contains(&kind) {
            into.skipped
                .push((file.to_path_buf(), format!("a {kind}, enforced by Cilium")));
            continue;
        }
        if kind == crate::brain::rule::KIND {
            let raw: crate::brain::rule::RawRule = serde_path_to_error::deserialize(value)
                .map_err(|e| {
                    let field = e.path().to_string();
                    error(file, format!("{prefix}{field}"), e.into_inner().to_string())
                })?;
            let rule = crate::brain::rule::parse(raw)
                .map_err(|(f, r)| error(file, format!("{prefix}{f}"), r))?;
            into.rules.push((file.to_path_buf(), rule));
            continue;
        }
        let policy = crate::policy::from_document(value)
            .map_err(|(field, reason)| error(file, format!("{prefix}{field}"), reason))?;
        into.policies.push((file.to_path_buf(), policy));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_once_each() {
        assert_eq!(
            placeholders("a ${PODCIDR} b ${X_1} ${PODCIDR} $NOPE ${} ${bad-name}"),
            vec!["PODCIDR", "X_1"]
        );
    }
}
