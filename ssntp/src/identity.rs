//! A client's persistent UUID: one file per role in a state directory, so a launcher that
//! restarts is the same node to the scheduler.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::role::Role;
use crate::uuid::Uuid;

/// The file that holds the UUID for `role` under `state_dir`.
pub fn uuid_path(state_dir: &Path, role: Role) -> PathBuf {
    state_dir.join(format!("uuid-{role}"))
}

/// Reads the UUID stored for `role`, or creates, stores and returns a new one.
///
/// A file that is empty or does not hold a UUID is replaced (with a warning): an identity
/// that cannot be read is worth less than a node that keeps running. The new file is written
/// to a temporary name and renamed, so a crash never leaves half a UUID behind.
///
/// # Errors
/// The directory cannot be created or the file cannot be written.
pub fn load_or_create_uuid(state_dir: &Path, role: Role) -> io::Result<Uuid> {
    let path = uuid_path(state_dir, role);
    match fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse() {
            Ok(uuid) => return Ok(uuid),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "replacing unreadable identity"),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(state_dir)?;
    let uuid = Uuid::new_v4();
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{uuid}\n"))?;
    fs::rename(&tmp, &path)?;
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_kept_and_garbage_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_uuid(dir.path(), Role::AGENT).unwrap();
        assert_eq!(load_or_create_uuid(dir.path(), Role::AGENT).unwrap(), first);
        let other = load_or_create_uuid(dir.path(), Role::CONTROLLER).unwrap();
        assert_ne!(other, first);
        fs::write(uuid_path(dir.path(), Role::AGENT), "garbage").unwrap();
        let replaced = load_or_create_uuid(dir.path(), Role::AGENT).unwrap();
        assert_ne!(replaced, first);
        assert_eq!(load_or_create_uuid(dir.path(), Role::AGENT).unwrap(), replaced);
    }
}
