//! A client's UUID: the one its certificate was issued to ([`uuid_for`]), kept in a file per
//! role in its state directory, so a launcher that restarts is the same node to the scheduler.
//! A certificate minted before identities leaves the UUID to that file alone
//! ([`load_or_create_uuid`]).

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

/// The state directory says this process was one UUID and its certificate was issued to
/// another: starting would make it a different node (or controller) from the one whose
/// instances the cluster knows.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The state file and the certificate disagree.
    #[error(
        "{path} says this {role} is {stored}, but its certificate was issued to {certified}; \
         issue the certificate for the same UUID (drover-cert issue --role {role} --name NAME --uuid {stored}), \
         or, to start afresh as {certified}, move {path} away"
    )]
    Conflict {
        /// The state file.
        path: String,
        /// The role.
        role: Role,
        /// The UUID in the file.
        stored: Uuid,
        /// The certificate's.
        certified: Uuid,
    },
    /// The state directory cannot be read or written.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The UUID this process is: the one its certificate was issued to (`certified`), written to
/// the state directory the first time; without one in the certificate, the state directory's
/// own ([`load_or_create_uuid`]).
///
/// # Errors
/// The state directory holds another UUID, or cannot be read or written.
pub fn uuid_for(state_dir: &Path, role: Role, certified: Option<Uuid>) -> Result<Uuid, IdentityError> {
    let Some(certified) = certified else { return Ok(load_or_create_uuid(state_dir, role)?) };
    let path = uuid_path(state_dir, role);
    match fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<Uuid>() {
            Ok(stored) if stored == certified => return Ok(certified),
            Ok(stored) => {
                return Err(IdentityError::Conflict { path: path.display().to_string(), role, stored, certified })
            }
            Err(_) => {}
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    fs::create_dir_all(state_dir)?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{certified}\n"))?;
    fs::rename(&tmp, &path)?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificates_identity_is_kept_and_a_different_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let issued = Uuid::from_bytes([3; 16]);
        assert_eq!(uuid_for(dir.path(), Role::AGENT, Some(issued)).unwrap(), issued);
        assert_eq!(load_or_create_uuid(dir.path(), Role::AGENT).unwrap(), issued, "written for restarts");
        let other = Uuid::from_bytes([4; 16]);
        let err = uuid_for(dir.path(), Role::AGENT, Some(other)).unwrap_err();
        assert!(err.to_string().contains(&format!("--uuid {issued}")), "{err}");
        assert_eq!(uuid_for(dir.path(), Role::AGENT, None).unwrap(), issued, "no identity: the file's");
    }

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
