//! The crate's error type, with the one mapping from errors to the ERROR frame a peer is sent.

use std::io;

use crate::frame::{ErrorCode, FrameError};
use crate::payload::{ErrorReport, Message, PayloadError};
use crate::role::{CertRoleError, Role};

/// Everything that can go wrong on an SSNTP connection.
///
/// Variants say whose fault it was: the peer's (`Frame`, `Payload`, `Protocol`, `Role*`),
/// the network's (`Io`, `Timeout`, `Closed`), or the remote side refusing us (`Rejected`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Socket or TLS failure (a rejected certificate shows up here on TLS 1.3 clients).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer sent a frame whose payload is not what its kind names.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The connection ended (cleanly) when a frame was expected.
    #[error("connection closed by peer")]
    Closed,
    /// The peer did not answer in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The peer broke the protocol's rules (wrong first frame, frame not allowed for its role …).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer's certificate carries no usable role.
    #[error("peer certificate: {0}")]
    CertRole(#[from] CertRoleError),
    /// The peer claimed a role its certificate does not carry, or a role not accepted here.
    #[error("role refused: claimed {claimed}, certificate carries {certified}")]
    RoleMismatch {
        /// Role claimed in CONNECT / CONNECTED.
        claimed: Role,
        /// Roles in the certificate.
        certified: Role,
    },
    /// The peer claimed a UUID other than the one its certificate was issued to, or one that a
    /// peer with another certificate holds right now.
    #[error("identity refused: {0}")]
    Identity(String),
    /// The remote side answered with an ERROR frame and closed.
    #[error("refused by peer ({code}): {reason}")]
    Rejected {
        /// The error operand the peer sent.
        code: ErrorCode,
        /// The reason it gave.
        reason: String,
    },
    /// The outbound queue is full (the peer reads too slowly) or the connection is gone.
    #[error("cannot send: {0}")]
    Send(&'static str),
}

impl Error {
    /// The ERROR frame to send a peer whose input caused this error, if any. Errors that are
    /// not the peer's fault (or that end the connection before anything can be said) map to
    /// `None`.
    pub fn to_peer_message(&self) -> Option<Message> {
        let reason = self.to_string();
        let report = ErrorReport { reason };
        Some(match self {
            Self::Frame(_) | Self::Protocol(_) => Message::InvalidFrameType(report),
            Self::Payload(_) => Message::InvalidPayload(report),
            Self::CertRole(_) | Self::RoleMismatch { .. } | Self::Identity(_) => Message::ConnectionAborted(report),
            Self::Io(_) | Self::Truncated | Self::Closed | Self::Timeout(_) | Self::Rejected { .. } | Self::Send(_) => {
                return None
            }
        })
    }

    /// Whether retrying unchanged cannot help (the peer refused our role or certificate).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { code: ErrorCode::ConnectionAborted, .. })
            || matches!(self, Self::RoleMismatch { .. } | Self::CertRole(_) | Self::Identity(_))
    }
}

/// Short alias for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
