//! The app's error type: each variant is one plain-language message with its recovery.

use crate::idb::IdbError;

#[derive(Clone, Debug, PartialEq)]
pub enum AppError {
    /// The network failed or the server refused; stored chunks are kept for a resume.
    Network(String),
    /// The browser's storage is full (the partial download is deleted, see `download`).
    Quota(String),
    /// The downloaded bytes do not match the catalog's sha256 (nothing was kept).
    Checksum {
        expected: String,
        got: String,
    },
    /// The download was cancelled by the user (stored part kept).
    Cancelled,
    /// Storage (IndexedDB) failure other than quota.
    Storage(String),
    Other(String),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Network(m) => write!(f, "Download interrupted: {m}. What was stored is kept; press Download to resume."),
            AppError::Quota(m) => write!(f, "This site's storage is full: {m}. Nothing of this model was kept. Delete other models below or free space in the browser's site settings, then try again."),
            AppError::Checksum { expected, got } => write!(f, "The downloaded file is not the expected one (sha256 {got}, expected {expected}). It was discarded."),
            AppError::Cancelled => write!(f, "Download cancelled. Press Download to resume."),
            AppError::Storage(m) => write!(f, "Browser storage failed: {m}"),
            AppError::Other(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<IdbError> for AppError {
    fn from(e: IdbError) -> Self {
        if e.name == "QuotaExceededError" {
            AppError::Quota(e.message)
        } else {
            AppError::Storage(e.message)
        }
    }
}
