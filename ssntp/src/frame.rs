//! Frames on the wire: the 8-byte header, the 16-byte origin UUID and the opaque payload.
//!
//! ```text
//!  0       1       2       3       4               8                      24
//!  +-------+-------+-------+-------+---------------+----------------------+---------------+
//!  | major | minor | type  |operand| payload_len   | origin UUID (16 B)   | payload (CBOR)|
//!  +-------+-------+-------+-------+---------------+----------------------+---------------+
//!                                    big-endian u32
//! ```
//!
//! This module knows bytes and [`Kind`]s only; what a payload means is [`crate::payload`]'s
//! business. The decoder is incremental: [`decode`] returns `Ok(None)` until a whole frame is
//! buffered, and it rejects a frame whose header is bad or whose length is over the limit as soon
//! as the 8 header bytes are there, before it waits for (or allocates) the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::uuid::Uuid;

/// Length of the fixed header: major, minor, type, operand, payload length.
pub const HEADER_LEN: usize = 8;
/// Length of the origin UUID that follows the header.
pub const ORIGIN_LEN: usize = 16;
/// Header plus origin: the bytes every frame carries before its payload.
pub const PREFIX_LEN: usize = HEADER_LEN + ORIGIN_LEN;
/// Protocol major version. A peer with another major is refused.
pub const MAJOR: u8 = 1;
/// Protocol minor version. Minor versions only add operands and payload keys, so any minor is
/// accepted from a peer.
pub const MINOR: u8 = 0;
/// Default upper bound on `payload_len`; configurable per connection.
pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// Why bytes could not be read as a frame. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The major version is not ours; nothing after it can be trusted.
    #[error("unsupported protocol version {major}.{minor} (this side speaks {MAJOR}.x)")]
    BadVersion {
        /// Major version the peer sent.
        major: u8,
        /// Minor version the peer sent.
        minor: u8,
    },
    /// `payload_len` is above the configured maximum; the frame was not buffered.
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Length the header announced.
        len: u32,
        /// Configured maximum.
        max: usize,
    },
    /// The type byte is not COMMAND, STATUS, ERROR or EVENT.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The operand is not defined for its type.
    #[error("unknown operand {operand} for frame type {ty}")]
    UnknownOperand {
        /// Frame type.
        ty: FrameType,
        /// Operand byte.
        operand: u8,
    },
}

/// Builds a `#[repr(u8)]` enum with its wire values, its name as printed in logs and a lookup
/// from the wire byte. One table per frame type keeps the numbers in exactly one place.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The wire byte.
            pub const fn wire(self) -> u8 {
                self as u8
            }

            /// Looks a wire byte up; `None` when it is not defined.
            pub const fn from_wire(byte: u8) -> Option<Self> {
                match byte {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The name used in logs and in `docs/ssntp.md`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum! {
    /// The type byte of a frame.
    FrameType {
        /// A request to act: CONNECT, START, STOP …
        Command = 0 => "COMMAND",
        /// A node's or the server's state: CONNECTED, READY, FULL …
        Status = 1 => "STATUS",
        /// A failure report.
        Error = 2 => "ERROR",
        /// Something that happened: instance stopped, node connected …
        Event = 3 => "EVENT",
    }
}

wire_enum! {
    /// Operands of COMMAND frames. 0–12 follow ciao's classic numbering; Drover's own start at 16.
    Command {
        /// Client → server handshake.
        Connect = 0 => "CONNECT",
        /// Controller → scheduler → chosen launcher: run an instance.
        Start = 1 => "START",
        /// Controller → scheduler → launcher: stop an instance, keep its results.
        Stop = 2 => "STOP",
        /// Launcher → scheduler → controllers: node and per-instance usage.
        Stats = 3 => "STATS",
        /// Controller → scheduler → launcher: maintenance, move everything away.
        Evacuate = 4 => "EVACUATE",
        /// Controller → scheduler → launcher: remove an instance and its results.
        Delete = 5 => "DELETE",
        /// Controller → scheduler → launcher: restart an instance in place.
        Restart = 6 => "RESTART",
        /// Controller → scheduler: replace the cluster configuration.
        Configure = 9 => "CONFIGURE",
        /// Controller → scheduler → launcher: leave maintenance.
        Restore = 12 => "RESTORE",
        /// Controller → scheduler → launcher: fetch the tail of an instance's output.
        LogFetch = 16 => "LOG_FETCH",
        /// Controller → scheduler → one launcher (or every launcher): send a digest now.
        ReportRequest = 17 => "REPORT_REQUEST",
        /// Controller → scheduler: the operator confirms a silent node is gone; declare it lost
        /// now, whatever the node-loss brake or the failover grace holds back.
        NodeForget = 18 => "NODE_FORGET",
        /// Controller → scheduler: where would a workload's instances go now, or why not? A
        /// dry run: nothing is placed or reserved; answered with PLAN_ANSWER.
        Plan = 19 => "PLAN",
        /// Controller → scheduler: move a running `vm` instance to another node without
        /// stopping it (live migration); the scheduler picks the destination unless named.
        Migrate = 20 => "MIGRATE",
        /// Scheduler → the source launcher: send the instance's state to the destination.
        MigrateOut = 21 => "MIGRATE_OUT",
        /// Scheduler → both launchers of a migration: it is over, committed or abandoned.
        MigrateEnd = 22 => "MIGRATE_END",
    }
}

wire_enum! {
    /// Operands of STATUS frames (unchanged since ciao).
    Status {
        /// Server → client: the handshake succeeded.
        Connected = 0 => "CONNECTED",
        /// Launcher: takes work; carries the capacity report.
        Ready = 1 => "READY",
        /// Launcher: takes no more work for now.
        Full = 2 => "FULL",
        /// Launcher: going away.
        Offline = 3 => "OFFLINE",
        /// Launcher: evacuated, takes no work until RESTORE.
        Maintenance = 4 => "MAINTENANCE",
    }
}

wire_enum! {
    /// Operands of EVENT frames. 2–9 as ciao; Drover's own start at 16.
    Event {
        /// Launcher: an instance and its results are gone.
        InstanceDeleted = 2 => "INSTANCE_DELETED",
        /// Anyone: timing trace of frames.
        TraceReport = 6 => "TRACE_REPORT",
        /// Scheduler → controllers: a launcher connected.
        NodeConnected = 7 => "NODE_CONNECTED",
        /// Scheduler → controllers: a launcher's connection dropped.
        NodeDisconnected = 8 => "NODE_DISCONNECTED",
        /// Launcher: an instance was stopped on request (results kept).
        InstanceStopped = 9 => "INSTANCE_STOPPED",
        /// Launcher: an instance's workload is running.
        InstanceStarted = 16 => "INSTANCE_STARTED",
        /// Launcher: an instance's workload ended by itself (exit code, reason).
        InstanceExited = 17 => "INSTANCE_EXITED",
        /// Scheduler → controllers: a START waits in the queue, and why.
        InstanceQueued = 18 => "INSTANCE_QUEUED",
        /// Scheduler → controllers: a node stayed silent past TTL + grace; its instances.
        NodeLost = 19 => "NODE_LOST",
        /// Launcher → controllers: answer to LOG_FETCH.
        LogData = 20 => "LOG_DATA",
        /// Launcher → scheduler → controllers: the instances that changed, batched, numbered.
        InstanceNews = 21 => "INSTANCE_NEWS",
        /// Scheduler → the controller that asked: the answer to PLAN.
        PlanAnswer = 22 => "PLAN_ANSWER",
        /// Destination launcher → scheduler: the incoming instance waits for its state here.
        MigrationReady = 23 => "MIGRATION_READY",
        /// Either launcher of a migration → scheduler: the state was copied (source), or the
        /// copy failed (either side).
        MigrationDone = 24 => "MIGRATION_DONE",
        /// Scheduler → controllers: a migration's outcome.
        InstanceMigrated = 25 => "INSTANCE_MIGRATED",
    }
}

wire_enum! {
    /// Operands of ERROR frames. 0–7 as ciao's classic numbering; Drover's own start at 16.
    ErrorCode {
        /// Unknown type or operand, or a frame the sender's role may not send.
        InvalidFrameType = 0 => "INVALID_FRAME_TYPE",
        /// A START could not be placed or launched.
        StartFailure = 1 => "START_FAILURE",
        /// A STOP failed.
        StopFailure = 2 => "STOP_FAILURE",
        /// Transient handshake failure: retry.
        ConnectionFailure = 3 => "CONNECTION_FAILURE",
        /// A RESTART failed.
        RestartFailure = 4 => "RESTART_FAILURE",
        /// A DELETE failed.
        DeleteFailure = 5 => "DELETE_FAILURE",
        /// Role or certificate refused: do not retry unchanged.
        ConnectionAborted = 6 => "CONNECTION_ABORTED",
        /// CONFIGURE carried an invalid configuration.
        InvalidConfiguration = 7 => "INVALID_CONFIGURATION",
        /// A payload could not be decoded or failed validation.
        InvalidPayload = 16 => "INVALID_PAYLOAD",
        /// EVACUATE, RESTORE or LOG_FETCH failed (the command is named in the payload).
        CommandFailure = 17 => "COMMAND_FAILURE",
    }
}

/// A frame's type and operand together: what the frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // The variants are the four frame types.
pub enum Kind {
    Command(Command),
    Status(Status),
    Error(ErrorCode),
    Event(Event),
}

impl Kind {
    /// Reads a type and operand byte pair.
    ///
    /// # Errors
    /// [`FrameError::UnknownType`] or [`FrameError::UnknownOperand`].
    pub fn from_wire(ty: u8, operand: u8) -> Result<Self, FrameError> {
        let ty = FrameType::from_wire(ty).ok_or(FrameError::UnknownType(ty))?;
        let kind = match ty {
            FrameType::Command => Command::from_wire(operand).map(Self::Command),
            FrameType::Status => Status::from_wire(operand).map(Self::Status),
            FrameType::Error => ErrorCode::from_wire(operand).map(Self::Error),
            FrameType::Event => Event::from_wire(operand).map(Self::Event),
        };
        kind.ok_or(FrameError::UnknownOperand { ty, operand })
    }

    /// The frame type.
    pub const fn frame_type(self) -> FrameType {
        match self {
            Self::Command(_) => FrameType::Command,
            Self::Status(_) => FrameType::Status,
            Self::Error(_) => FrameType::Error,
            Self::Event(_) => FrameType::Event,
        }
    }

    /// The operand byte.
    pub const fn operand(self) -> u8 {
        match self {
            Self::Command(c) => c.wire(),
            Self::Status(s) => s.wire(),
            Self::Error(e) => e.wire(),
            Self::Event(e) => e.wire(),
        }
    }

    /// Every kind the protocol defines.
    pub fn all() -> impl Iterator<Item = Self> {
        let commands = Command::ALL.iter().copied().map(Self::Command);
        let statuses = Status::ALL.iter().copied().map(Self::Status);
        let errors = ErrorCode::ALL.iter().copied().map(Self::Error);
        let events = Event::ALL.iter().copied().map(Self::Event);
        commands.chain(statuses).chain(errors).chain(events)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Command(c) => write!(f, "COMMAND/{c}"),
            Self::Status(s) => write!(f, "STATUS/{s}"),
            Self::Error(e) => write!(f, "ERROR/{e}"),
            Self::Event(e) => write!(f, "EVENT/{e}"),
        }
    }
}

/// One frame with its payload still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Type and operand.
    pub kind: Kind,
    /// UUID of the peer that created the frame (kept when the scheduler forwards it).
    pub origin: Uuid,
    /// The CBOR payload, possibly empty.
    pub payload: Bytes,
}

impl Frame {
    /// Appends the frame's bytes to `dst`.
    ///
    /// # Panics
    /// If the payload is longer than `u32::MAX` bytes; [`crate::payload`] never builds one
    /// anywhere near that (senders check against their peer's maximum first).
    pub fn encode(&self, dst: &mut BytesMut) {
        let len = u32::try_from(self.payload.len()).expect("payload length fits in u32");
        dst.reserve(PREFIX_LEN + self.payload.len());
        dst.put_u8(MAJOR);
        dst.put_u8(MINOR);
        dst.put_u8(self.kind.frame_type().wire());
        dst.put_u8(self.kind.operand());
        dst.put_u32(len);
        dst.put_slice(self.origin.as_bytes());
        dst.put_slice(&self.payload);
    }

    /// The frame as one byte vector.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(PREFIX_LEN + self.payload.len());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Number of bytes the frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        PREFIX_LEN + self.payload.len()
    }
}

/// A decoded header; see [`peek_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Type and operand.
    pub kind: Kind,
    /// Payload length announced by the header (already checked against the maximum).
    pub payload_len: u32,
}

/// Checks the first [`HEADER_LEN`] bytes of `src` without consuming anything.
///
/// Returns `Ok(None)` while fewer than [`HEADER_LEN`] bytes are available.
///
/// # Errors
/// A bad version, an unknown type or operand, or a length over `max_payload`.
pub fn peek_header(src: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    let Some(header) = src.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let (major, minor) = (header[0], header[1]);
    if major != MAJOR {
        return Err(FrameError::BadVersion { major, minor });
    }
    let payload_len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    // Compare in u64 so a u32 length never wraps on any target.
    if u64::from(payload_len) > max_payload as u64 {
        return Err(FrameError::TooLarge { len: payload_len, max: max_payload });
    }
    let kind = Kind::from_wire(header[2], header[3])?;
    Ok(Some(Header { kind, payload_len }))
}

/// Takes one whole frame off the front of `src`, if one is buffered.
///
/// On `Ok(None)` nothing is consumed; the caller reads more bytes and calls again. Errors are
/// reported as soon as the header is complete, so an oversized frame is never buffered.
///
/// # Errors
/// See [`peek_header`].
pub fn decode(src: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>, FrameError> {
    let Some(header) = peek_header(src, max_payload)? else {
        return Ok(None);
    };
    let total = PREFIX_LEN + header.payload_len as usize;
    if src.len() < total {
        // Reserve only what this frame still needs; the length was checked above.
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let mut origin = [0u8; ORIGIN_LEN];
    src.copy_to_slice(&mut origin);
    let payload = src.split_to(header.payload_len as usize).freeze();
    Ok(Some(Frame { kind: header.kind, origin: Uuid::from_bytes(origin), payload }))
}

/// Decodes exactly one frame from a complete byte slice (fuzzing, tests, golden bytes).
///
/// # Errors
/// A [`FrameError`], or [`DecodeOneError::Truncated`] / [`DecodeOneError::Trailing`] when the
/// slice is not exactly one frame.
pub fn decode_one(bytes: &[u8], max_payload: usize) -> Result<Frame, DecodeOneError> {
    let mut buf = BytesMut::from(bytes);
    let frame = decode(&mut buf, max_payload)?.ok_or(DecodeOneError::Truncated)?;
    if buf.is_empty() {
        Ok(frame)
    } else {
        Err(DecodeOneError::Trailing(buf.len()))
    }
}

/// Why [`decode_one`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeOneError {
    /// The frame itself is bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The bytes end before the frame does.
    #[error("truncated frame")]
    Truncated,
    /// Bytes follow the frame.
    #[error("{0} bytes after the frame")]
    Trailing(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame {
            kind: Kind::Status(Status::Ready),
            origin: Uuid::from_bytes([7; 16]),
            payload: Bytes::from_static(b"\xa0"),
        }
    }

    #[test]
    fn incomplete_input_consumes_nothing() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode(&mut buf, DEFAULT_MAX_PAYLOAD), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, DEFAULT_MAX_PAYLOAD), Ok(Some(sample())));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let header = [MAJOR, MINOR, 0, 1, 0xff, 0xff, 0xff, 0xff];
        let mut buf = BytesMut::from(&header[..]);
        let err = decode(&mut buf, DEFAULT_MAX_PAYLOAD).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: u32::MAX, max: DEFAULT_MAX_PAYLOAD });
        assert!(buf.capacity() < 1024, "nothing was reserved for the payload");
    }

    #[test]
    fn unknown_type_operand_and_version_are_refused() {
        let check = |h: [u8; 8], want: FrameError| {
            assert_eq!(peek_header(&h, 100), Err(want));
        };
        check([MAJOR, 0, 4, 0, 0, 0, 0, 0], FrameError::UnknownType(4));
        check([MAJOR, 0, 0, 7, 0, 0, 0, 0], FrameError::UnknownOperand { ty: FrameType::Command, operand: 7 });
        check([2, 0, 0, 0, 0, 0, 0, 0], FrameError::BadVersion { major: 2, minor: 0 });
        // A newer minor version is accepted.
        assert!(peek_header(&[MAJOR, 9, 1, 1, 0, 0, 0, 0], 100).unwrap().is_some());
    }

    #[test]
    fn every_kind_survives_the_wire_numbers() {
        for kind in Kind::all() {
            let back = Kind::from_wire(kind.frame_type().wire(), kind.operand()).unwrap();
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn decode_one_rejects_trailing_bytes() {
        let mut bytes = sample().to_bytes().to_vec();
        bytes.push(0);
        assert_eq!(decode_one(&bytes, 100), Err(DecodeOneError::Trailing(1)));
    }
}
