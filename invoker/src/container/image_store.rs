//! Runtime images read from an image store on disk, so that an OCI-runtime backend needs no
//! Docker daemon at run time.
//!
//! The store is a folder of image archives in the format `docker save` writes (and `skopeo copy
//! ... docker-archive:` too): a tar holding `manifest.json`, the image configuration and one tar
//! per layer. `runtimes/build.sh` writes one archive per runtime image it builds, named by
//! [`archive_name`]; an operator can copy archives made anywhere. Both layouts of the format are
//! read: the legacy one (`<id>.json`, `<hash>/layer.tar`) of Docker up to 24 and the OCI one
//! (`blobs/sha256/<hex>`) of Docker 25 on.
//!
//! Layers are applied in order with their whiteouts (`.wh.<name>` removes `<name>` of the layers
//! below, `.wh..wh..opq` empties the folder it is in), as overlayfs and Docker do.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The image configuration's fields a container needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    /// The image id: the configuration blob's sha256, hex.
    pub id: String,
    /// `Entrypoint` followed by `Cmd`.
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// `WorkingDir`, `/` when empty.
    pub cwd: String,
}

/// An archive could not be read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("cannot read image archive {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image archive {} has no {what}", .path.display())]
    Missing { path: PathBuf, what: String },
    #[error("image archive {}: {what} is not valid JSON", .path.display())]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("image archive {} does not hold image {image}", .path.display())]
    NotTagged { path: PathBuf, image: String },
    #[error("cannot unpack layer {layer} of {} into {}", .path.display(), .into.display())]
    Unpack {
        path: PathBuf,
        layer: String,
        into: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file name of `image`'s archive in a store: the reference with `/` and `:` made safe
/// (`openwhisk/action-nodejs-v18:nightly` → `openwhisk_action-nodejs-v18_nightly.tar`).
pub fn archive_name(image: &str) -> String {
    let safe: String = image
        .chars()
        .map(|c| match c {
            '/' | ':' | '@' => '_',
            c => c,
        })
        .collect();
    format!("{safe}.tar")
}

/// `image`'s archive in `store`, if there is one.
pub fn find(store: &Path, image: &str) -> Option<PathBuf> {
    let path = store.join(archive_name(image));
    path.is_file().then_some(path)
}

#[derive(Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: ContainerConfig,
}

#[derive(Default, Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

/// An opened archive: its manifest entry for one image and its configuration.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    layers: Vec<String>,
    image: StoredImage,
}

impl Archive {
    /// Reads `path`'s manifest and the configuration of `image` (the archive's only image when
    /// it holds one, else the one tagged `image`). Blocking: call it off the async workers.
    pub fn open(path: &Path, image: &str) -> Result<Self, ImageStoreError> {
        let small = read_entries(path, &["manifest.json"])?;
        let manifest = small
            .get("manifest.json")
            .ok_or_else(|| ImageStoreError::Missing {
                path: path.to_owned(),
                what: "manifest.json".into(),
            })?;
        let entries: Vec<ManifestEntry> =
            serde_json::from_slice(manifest).map_err(|source| ImageStoreError::Json {
                path: path.to_owned(),
                what: "manifest.json",
                source,
            })?;
        let entry = if entries.len() == 1 {
            entries.into_iter().next()
        } else {
            entries.into_iter().find(|e| {
                e.repo_tags
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| t == image))
            })
        }
        .ok_or_else(|| ImageStoreError::NotTagged {
            path: path.to_owned(),
            image: image.to_owned(),
        })?;
        let config_bytes = read_entries(path, &[entry.config.as_str()])?
            .remove(&entry.config)
            .ok_or_else(|| ImageStoreError::Missing {
                path: path.to_owned(),
                what: entry.config.clone(),
            })?;
        let blob: ConfigBlob =
            serde_json::from_slice(&config_bytes).map_err(|source| ImageStoreError::Json {
                path: path.to_owned(),
                what: "the image configuration",
                source,
            })?;
        let id = entry
            .config
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json")
            .to_owned();
        let c = blob.config;
        let mut args = c.entrypoint.unwrap_or_default();
        args.extend(c.cmd.unwrap_or_default());
        Ok(Self {
            path: path.to_owned(),
            layers: entry.layers,
            image: StoredImage {
                id,
                args,
                env: c.env.unwrap_or_default(),
                cwd: c
                    .working_dir
                    .filter(|w| !w.is_empty())
                    .unwrap_or_else(|| "/".into()),
            },
        })
    }

    /// The image's configuration.
    pub fn image(&self) -> &StoredImage {
        &self.image
    }

    /// Applies every layer, lowest first, into `rootfs` (which must exist and be empty).
    /// Blocking: call it off the async workers.
    pub fn unpack(&self, rootfs: &Path) -> Result<(), ImageStoreError> {
        for layer in &self.layers {
            let fail = |source| ImageStoreError::Unpack {
                path: self.path.clone(),
                layer: layer.clone(),
                into: rootfs.to_owned(),
                source,
            };
            // Whiteouts first (they remove what lower layers put there, never this layer's own
            // files), then the layer's files.
            self.with_layer(layer, |tar| apply_whiteouts(tar, rootfs).map_err(fail))?;
            self.with_layer(layer, |tar| unpack_files(tar, rootfs).map_err(fail))?;
        }
        Ok(())
    }

    /// Runs `f` on layer `name`'s tar, read in place from the archive.
    fn with_layer(
        &self,
        name: &str,
        f: impl FnOnce(&mut tar::Archive<&mut dyn Read>) -> Result<(), ImageStoreError>,
    ) -> Result<(), ImageStoreError> {
        let read_err = |source| ImageStoreError::Read {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(read_err)?;
        let mut outer = tar::Archive::new(file);
        for entry in outer.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            if entry_path(&entry).as_deref() == Some(name) {
                let reader: &mut dyn Read = &mut entry;
                let mut inner = tar::Archive::new(reader);
                return f(&mut inner);
            }
        }
        Err(ImageStoreError::Missing {
            path: self.path.clone(),
            what: format!("layer {name}"),
        })
    }
}

/// The entry's path as written in the archive (`./` stripped).
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Option<String> {
    let p = entry.path().ok()?;
    let s = p.to_str()?.trim_start_matches("./").to_owned();
    Some(s)
}

/// The small entries `names` of archive `path`, by name.
fn read_entries(path: &Path, names: &[&str]) -> Result<HashMap<String, Vec<u8>>, ImageStoreError> {
    let read_err = |source| ImageStoreError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut archive = tar::Archive::new(file);
    let mut found = HashMap::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let Some(name) = entry_path(&entry) else {
            continue;
        };
        if names.contains(&name.as_str()) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(read_err)?;
            found.insert(name, bytes);
            if found.len() == names.len() {
                break;
            }
        }
    }
    Ok(found)
}

/// Removes what the layer's whiteout entries name.
fn apply_whiteouts(tar: &mut tar::Archive<&mut dyn Read>, rootfs: &Path) -> std::io::Result<()> {
    for entry in tar.entries()? {
        let entry = entry?;
        let Some(path) = entry_path(&entry) else {
            continue;
        };
        let path = Path::new(&path);
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(target) = name.strip_prefix(".wh.") else {
            continue;
        };
        let parent = safe_relative(path.parent().unwrap_or(Path::new("")))?;
        // The folder must be a real folder of the image all the way down: a symbolic link left
        // by a lower layer (Debian's `var/run -> /run`) would point the removal at the host.
        let Some(dir) = real_dir(rootfs, &parent)? else {
            continue; // nothing below it exists yet: nothing to white out
        };
        if target == ".wh..opq" {
            for child in std::fs::read_dir(&dir)? {
                remove_any(&child?.path())?;
            }
        } else {
            remove_any(&dir.join(safe_relative(Path::new(target))?))?;
        }
    }
    Ok(())
}

/// Unpacks the layer's files (whiteout markers are not files).
fn unpack_files(tar: &mut tar::Archive<&mut dyn Read>, rootfs: &Path) -> std::io::Result<()> {
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let is_whiteout = entry_path(&entry).is_some_and(|p| {
            Path::new(&p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".wh."))
        });
        if !is_whiteout {
            // `unpack_in` refuses paths that leave `rootfs` (`..`, absolute links above it).
            entry.unpack_in(rootfs)?;
        }
    }
    Ok(())
}

/// `p` without a root or `..` (a whiteout never points outside the image).
fn safe_relative(p: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("whiteout path {} leaves the image", p.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// `rootfs/rel` if every component of it is a real folder (no symbolic link), `None` if one
/// does not exist; an error if one is a link or a file.
fn real_dir(rootfs: &Path, rel: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut dir = rootfs.to_owned();
    for c in rel.components() {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "whiteout below {}, which is not a folder of the image",
                        dir.display()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(dir))
}

/// Removes a file, link or folder tree; a missing one is fine. A link is removed, never
/// followed.
fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            // Owned by whoever runs the test: ownership is preserved, and only root may chown.
            h.set_uid(nix::unistd::getuid().as_raw().into());
            h.set_gid(nix::unistd::getgid().as_raw().into());
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// An archive as Docker 20.10's `docker save` writes it: layers first, manifest last.
    fn archive(dir: &Path, config_name: &str, layer_names: [&str; 2]) -> PathBuf {
        let lower = tar_of(&[
            ("bin/a", b"a"),
            ("etc/x", b"x"),
            ("etc/y", b"y"),
            ("d/old", b"old"),
        ]);
        let upper = tar_of(&[
            ("etc/.wh.x", b""),
            ("d/.wh..wh..opq", b""),
            ("d/new", b"new"),
            ("bin/a", b"a2"),
        ]);
        let config = serde_json::json!({"config": {"Entrypoint": ["/bin/action-proxy"],
            "Cmd": ["--flag"], "Env": ["PATH=/bin", "OW_ACTION_DIR=/action"], "WorkingDir": ""}});
        let manifest = serde_json::json!([{"Config": config_name,
            "RepoTags": ["openwhisk/action-test:nightly"], "Layers": layer_names}]);
        let outer = tar_of(&[
            (layer_names[1], &upper),
            (config_name, config.to_string().as_bytes()),
            (layer_names[0], &lower),
            ("manifest.json", manifest.to_string().as_bytes()),
        ]);
        let path = dir.join(archive_name("openwhisk/action-test:nightly"));
        std::fs::write(&path, outer).unwrap();
        path
    }

    fn check_unpacked(rootfs: &Path) {
        assert_eq!(std::fs::read(rootfs.join("bin/a")).unwrap(), b"a2");
        assert!(!rootfs.join("etc/x").exists(), "whited out");
        assert_eq!(std::fs::read(rootfs.join("etc/y")).unwrap(), b"y");
        assert!(!rootfs.join("d/old").exists(), "opaque folder emptied");
        assert_eq!(std::fs::read(rootfs.join("d/new")).unwrap(), b"new");
    }

    #[test]
    fn a_legacy_archive_is_configured_and_unpacked_with_its_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(
            dir.path(),
            "0123abcd.json",
            ["l1/layer.tar", "l2/layer.tar"],
        );
        assert_eq!(
            find(dir.path(), "openwhisk/action-test:nightly"),
            Some(path.clone())
        );
        let a = Archive::open(&path, "openwhisk/action-test:nightly").unwrap();
        assert_eq!(
            a.image(),
            &StoredImage {
                id: "0123abcd".into(),
                args: vec!["/bin/action-proxy".into(), "--flag".into()],
                env: vec!["PATH=/bin".into(), "OW_ACTION_DIR=/action".into()],
                cwd: "/".into(),
            }
        );
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        a.unpack(&rootfs).unwrap();
        check_unpacked(&rootfs);
    }

    #[test]
    fn an_oci_layout_archive_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(
            dir.path(),
            "blobs/sha256/feed",
            ["blobs/sha256/aa", "blobs/sha256/bb"],
        );
        let a = Archive::open(&path, "anything: a single image is taken").unwrap();
        assert_eq!(a.image().id, "feed");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        a.unpack(&rootfs).unwrap();
        check_unpacked(&rootfs);
    }

    #[test]
    fn a_missing_layer_or_manifest_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, tar_of(&[("other", b"1")])).unwrap();
        let e = Archive::open(&path, "x").unwrap_err();
        assert!(
            matches!(&e, ImageStoreError::Missing { what, .. } if what == "manifest.json"),
            "{e:?}"
        );
        let manifest = serde_json::json!([{"Config": "c.json", "Layers": ["gone.tar"]}]);
        std::fs::write(
            &path,
            tar_of(&[
                ("c.json", b"{}"),
                ("manifest.json", manifest.to_string().as_bytes()),
            ]),
        )
        .unwrap();
        let a = Archive::open(&path, "x").unwrap();
        assert!(a.image().args.is_empty());
        let e = a.unpack(dir.path()).unwrap_err();
        assert!(
            matches!(&e, ImageStoreError::Missing { what, .. } if what == "layer gone.tar"),
            "{e:?}"
        );
    }

    #[test]
    fn a_whiteout_below_a_symbolic_link_never_reaches_outside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("x"), b"keep").unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("var")).unwrap();
        // What a lower layer of a Debian image holds: `var/run -> /run`, here -> `outside`.
        std::os::unix::fs::symlink(&outside, rootfs.join("var/run")).unwrap();
        for marker in ["var/run/.wh.x", "var/run/.wh..wh..opq"] {
            let layer = tar_of(&[(marker, b"")]);
            let mut reader: &[u8] = &layer;
            let r: &mut dyn Read = &mut reader;
            let mut tar = tar::Archive::new(r);
            assert!(apply_whiteouts(&mut tar, &rootfs).is_err(), "{marker}");
            assert_eq!(
                std::fs::read(outside.join("x")).unwrap(),
                b"keep",
                "{marker}"
            );
        }
        // A whiteout of the link itself removes the link, not what it points to.
        let layer = tar_of(&[("var/.wh.run", b"")]);
        let mut reader: &[u8] = &layer;
        let r: &mut dyn Read = &mut reader;
        apply_whiteouts(&mut tar::Archive::new(r), &rootfs).unwrap();
        assert!(std::fs::symlink_metadata(rootfs.join("var/run")).is_err());
        assert_eq!(std::fs::read(outside.join("x")).unwrap(), b"keep");
    }

    #[test]
    fn a_whiteout_cannot_point_outside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        // tar::Builder refuses `..` in names, so write the header by hand.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../.wh.victim");
        h.set_size(0);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[0; 1024]);
        let mut reader: &[u8] = &bytes;
        let r: &mut dyn Read = &mut reader;
        let mut tar = tar::Archive::new(r);
        assert!(apply_whiteouts(&mut tar, &rootfs).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
