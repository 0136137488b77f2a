//! The runtimes manifest (`RUNTIMES_MANIFEST`, contract §4.2): kinds, their images, which
//! kinds keep code as an attachment, which write sentinels, and the stem cells to prewarm.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::parse_bytes;

/// A manifest that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("RUNTIMES_MANIFEST is not a valid runtimes manifest")]
    Json(#[source] serde_json::Error),
    #[error("cannot read the runtimes manifest file {path} (RUNTIMES_MANIFEST)")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("RUNTIMES_MANIFEST: stem cell of {kind}: {detail}")]
    StemCell { kind: String, detail: String },
    #[error("RUNTIMES_MANIFEST: family {0} has no default kind")]
    NoDefault(String),
}

#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(default)]
    runtimes: BTreeMap<String, Vec<RawKind>>,
    #[serde(default)]
    blackboxes: Vec<ImageName>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKind {
    kind: String,
    #[serde(default)]
    default: bool,
    image: ImageName,
    #[serde(default)]
    deprecated: bool,
    #[serde(default)]
    attached: Option<serde_json::Value>,
    #[serde(default)]
    require_main: bool,
    #[serde(default)]
    sentinelled_logs: Option<bool>,
    #[serde(default)]
    stem_cells: Vec<RawStemCell>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStemCell {
    #[serde(alias = "count")]
    initial_count: usize,
    memory: String,
}

/// `[registry/]prefix/name[:tag]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ImageName {
    #[serde(default)]
    pub registry: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    pub name: String,
    #[serde(default)]
    pub tag: Option<String>,
}

impl ImageName {
    /// The image reference, with `registry` in front when the manifest gives none.
    pub fn reference(&self, registry: &str) -> String {
        let mut out = String::new();
        let registry = self.registry.as_deref().unwrap_or(registry);
        if !registry.is_empty() {
            out.push_str(registry.trim_end_matches('/'));
            out.push('/');
        }
        if let Some(p) = self.prefix.as_deref().filter(|p| !p.is_empty()) {
            out.push_str(p);
            out.push('/');
        }
        out.push_str(&self.name);
        if let Some(t) = self.tag.as_deref().filter(|t| !t.is_empty()) {
            out.push(':');
            out.push_str(t);
        }
        out
    }
}

/// One managed kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kind {
    pub kind: String,
    pub image: ImageName,
    pub deprecated: bool,
    /// Code is kept as an attachment (`mem:`/`couch:`), not inline.
    pub attached: bool,
    pub require_main: bool,
    /// The runtime writes the end-of-activation sentinels.
    pub sentinelled_logs: bool,
}

/// Containers to keep prewarmed for a kind and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StemCell {
    pub kind: String,
    pub memory_mb: u64,
    pub count: usize,
}

/// The parsed manifest.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    kinds: BTreeMap<String, Kind>,
    defaults: BTreeMap<String, String>,
    blackboxes: Vec<ImageName>,
    pub stem_cells: Vec<StemCell>,
}

impl Manifest {
    /// `RUNTIMES_MANIFEST` as OpenWhisk passes it: the JSON itself, or the path of a file
    /// holding it.
    pub fn load(value: &str) -> Result<Self, ManifestError> {
        if value.trim_start().starts_with('{') {
            return Self::parse(value);
        }
        let text = std::fs::read_to_string(value).map_err(|source| ManifestError::File {
            path: value.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses the manifest JSON.
    pub fn parse(json: &str) -> Result<Self, ManifestError> {
        let raw: Raw = serde_json::from_str(json).map_err(ManifestError::Json)?;
        let mut m = Self {
            blackboxes: raw.blackboxes,
            ..Self::default()
        };
        for (family, kinds) in raw.runtimes {
            let mut default = None;
            for k in kinds {
                if k.default {
                    default = Some(k.kind.clone());
                }
                for cell in &k.stem_cells {
                    let bytes = parse_bytes(&k.kind, &cell.memory).map_err(|e| {
                        ManifestError::StemCell {
                            kind: k.kind.clone(),
                            detail: e.to_string(),
                        }
                    })?;
                    m.stem_cells.push(StemCell {
                        kind: k.kind.clone(),
                        memory_mb: bytes >> 20,
                        count: cell.initial_count,
                    });
                }
                m.kinds.insert(
                    k.kind.clone(),
                    Kind {
                        kind: k.kind,
                        image: k.image,
                        deprecated: k.deprecated,
                        attached: k.attached.is_some(),
                        require_main: k.require_main,
                        sentinelled_logs: k.sentinelled_logs.unwrap_or(true),
                    },
                );
            }
            match default {
                Some(d) => {
                    m.defaults.insert(family, d);
                }
                None => return Err(ManifestError::NoDefault(family)),
            }
        }
        Ok(m)
    }

    /// The kind, with `<family>:default` resolved.
    pub fn resolve(&self, kind: &str) -> Option<&Kind> {
        let name = match kind.strip_suffix(":default") {
            Some(family) => self.defaults.get(family)?.as_str(),
            None => kind,
        };
        self.kinds.get(name)
    }

    /// Every managed kind's name, sorted.
    pub fn kind_names(&self) -> Vec<&str> {
        self.kinds.keys().map(String::as_str).collect()
    }

    /// Every image the manifest names: the kinds' and the local blackboxes'.
    pub fn images(&self, registry: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .kinds
            .values()
            .map(|k| k.image.reference(registry))
            .collect();
        out.extend(self.blackboxes.iter().map(|b| b.reference("")));
        out.sort();
        out.dedup();
        out
    }

    /// Whether a blackbox image is one of the manifest's (built locally: never pulled, writes
    /// sentinels).
    pub fn is_native_blackbox(&self, image: &str) -> bool {
        self.blackboxes
            .iter()
            .any(|b| b.reference("") == image || b.reference("") == format!("{image}:latest"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_manifest_parses() {
        let m = Manifest::parse(include_str!("../../runtimes/runtimes.json")).unwrap();
        let node = m.resolve("nodejs:default").unwrap();
        assert_eq!(node.kind, "nodejs:18");
        assert_eq!(
            node.image.reference(""),
            "openwhisk/action-nodejs-v18:nightly"
        );
        assert!(node.attached && node.sentinelled_logs);
        assert!(m.resolve("python:3.11").is_some());
        assert!(m.resolve("java:8").is_none());
        assert!(m.is_native_blackbox("openwhisk/dockerskeleton:nightly"));
        assert_eq!(
            m.stem_cells,
            [StemCell {
                kind: "nodejs:18".into(),
                memory_mb: 256,
                count: 2
            }]
        );
        assert_eq!(
            node.image.reference("registry.local:5000"),
            "registry.local:5000/openwhisk/action-nodejs-v18:nightly"
        );
    }

    #[test]
    fn the_manifest_is_loaded_from_json_or_from_a_file() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json");
        let from_file = Manifest::load(path).unwrap();
        let from_json = Manifest::load(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(from_file.stem_cells, from_json.stem_cells);
        match Manifest::load("/nonexistent/runtimes.json") {
            Err(ManifestError::File { path, .. }) => assert_eq!(path, "/nonexistent/runtimes.json"),
            other => panic!("expected a file error, got {other:?}"),
        }
        assert!(matches!(
            Manifest::load("{not json"),
            Err(ManifestError::Json(_))
        ));
    }
}
