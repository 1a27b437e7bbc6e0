//! Kubernetes label selectors (`podSelector`): `matchLabels` and
//! `matchExpressions` with In, NotIn, Exists and DoesNotExist.
use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<RawExpression>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpression {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches every pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Tetragon's key for the pod's namespace in a podSelector.
const NAMESPACE_KEY: &str = "k8s:io.kubernetes.pod.namespace";

impl LabelSelector {
    pub fn parse(raw: RawLabelSelector, at: &str) -> Result<Self, (String, String)> {
        let mut reqs: Vec<Requirement> = raw
            .match_labels
            .into_iter()
            .map(|(k, v)| Requirement::In(k, vec![v]))
            .collect();
        for (i, e) in raw.match_expressions.into_iter().enumerate() {
            let f = format!("{at}.matchExpressions[{i}]");
            let needs_values = matches!(e.operator.as_str(), "In" | "NotIn");
            if needs_values == e.values.is_empty() {
                let why = if needs_values {
                    "In and NotIn need values"
                } else {
                    "Exists and DoesNotExist take no values"
                };
                return Err((format!("{f}.values"), why.into()));
            }
            reqs.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key, e.values),
                "NotIn" => Requirement::NotIn(e.key, e.values),
                "Exists" => Requirement::Exists(e.key),
                "DoesNotExist" => Requirement::DoesNotExist(e.key),
                o => {
                    return Err((
                        format!("{f}.operator"),
                        format!(
                            "unknown operator `{o}`; expected In, NotIn, Exists or DoesNotExist"
                        ),
                    ))
                }
            });
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether a pod in `namespace` with `labels` is selected.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &str| {
            if k == NAMESPACE_KEY {
                Some(namespace)
            } else {
                labels.get(k).map(String::as_str)
            }
        };
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels_and_namespace() {
        let raw: RawLabelSelector = serde_yaml::from_str(
            "matchLabels: {app: web}\nmatchExpressions:\n- {key: tier, operator: NotIn, values: [db]}\n- {key: k8s:io.kubernetes.pod.namespace, operator: In, values: [shop]}\n",
        )
        .unwrap();
        let s = LabelSelector::parse(raw, "spec.podSelector").unwrap();
        let l = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(s.matches("shop", &l(&[("app", "web")])));
        assert!(!s.matches("shop", &l(&[("app", "web"), ("tier", "db")])));
        assert!(!s.matches("other", &l(&[("app", "web")])));
        assert!(LabelSelector::default().matches("x", &l(&[])));
        let bad: RawLabelSelector =
            serde_yaml::from_str("matchExpressions: [{key: a, operator: Exists, values: [x]}]")
                .unwrap();
        assert_eq!(
            LabelSelector::parse(bad, "s").unwrap_err().0,
            "s.matchExpressions[0].values"
        );
    }
}
