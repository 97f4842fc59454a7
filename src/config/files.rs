//! Reading the files a config names, in one place: every read is bounded in
//! size, and what an operator should know about a secret file (who else can
//! read it, whether a symlink leads out of the config's folder) becomes a
//! notice that `check-config` prints and `serve` logs.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The largest config, rules or JWKS file read: far above any real one.
pub(crate) const MAX_DOCUMENT_BYTES: u64 = 1 << 20;
/// The largest secret file read (an App Certificate is 32 bytes, an HS secret a few dozen).
pub(crate) const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Reads `path`, refusing more than `limit` bytes (checked while reading, so
/// a growing file or a device cannot make the read unbounded either).
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(bytes)
}

/// Notices about a secret file: readable by other users, or a path that
/// resolves outside `base` (the config's folder). Neither is refused, because
/// both are normal in some deployments (a Kubernetes Secret volume is 0644
/// unless `defaultMode` says otherwise, and lives in its own folder), but an
/// operator should see them.
pub(crate) fn secret_file_notices(key: &str, path: &Path, base: &Path) -> Vec<String> {
    let mut notices = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o004 != 0
        {
            notices.push(format!(
                "{key}: {} is readable by every user (mode {:o}); make it 0400 or 0440",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
    }
    if let Some(outside) = outside(path, base) {
        notices.push(format!(
            "{key}: {} resolves to {}, outside the config's folder {}",
            path.display(),
            outside.display(),
            base.display()
        ));
    }
    notices
}

/// The resolved path, when following `path`'s symlinks leads outside `base`
/// although the path as written is inside it.
fn outside(path: &Path, base: &Path) -> Option<PathBuf> {
    let base = std::fs::canonicalize(base).ok()?;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let written_inside =
        joined.starts_with(&base) && !joined.components().any(|c| c.as_os_str() == "..");
    let resolved = std::fs::canonicalize(&joined).ok()?;
    (written_inside && !resolved.starts_with(&base)).then_some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'x'; 11]).unwrap();
        assert_eq!(read_bounded(&path, 11).unwrap().len(), 11);
        assert!(
            read_bounded(&path, 10)
                .unwrap_err()
                .contains("larger than 10 bytes")
        );
        assert!(read_bounded(&dir.path().join("missing"), 10).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_secrets_and_symlinks_out_of_the_folder_are_noticed() {
        use std::os::unix::fs::PermissionsExt as _;
        let config_dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let private = config_dir.path().join("private");
        std::fs::write(&private, "s").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(secret_file_notices("k", &private, config_dir.path()).is_empty());
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let notices = secret_file_notices("k", &private, config_dir.path());
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(notices[0].contains("readable by every user (mode 644)"));

        let target = elsewhere.path().join("cert");
        std::fs::write(&target, "s").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o400)).unwrap();
        let link = config_dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let notices = secret_file_notices("k", &link, config_dir.path());
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(
            notices[0].contains("outside the config's folder"),
            "{notices:?}"
        );
    }
}
