//! The job model: ids, statuses, how a job ended, and the JSON view clients see.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::import::ImportError;
use crate::line::{Step, format_ts};
use crate::names::{ImageRef, TemplateName};

/// The id of one build job. The import runs with the same id, so the working
/// container's name and the dataset's `coppice:job` property carry it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// Parses an id in any form `uuid` accepts. The API prints the hyphenated form.
    pub fn parse(value: &str) -> Option<Self> {
        Uuid::try_parse(value).ok().map(Self)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The lifecycle state of a job: `queued` → `running` → `succeeded` or `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 4] = [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == value)
    }

    /// True for `succeeded` and `failed`, the states a job never leaves.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of a failed import, so that callers can choose a status code without
/// parsing the error text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The template name or the dataset derived from it was invalid.
    InvalidName,
    /// The template's dataset already existed in ZFS.
    AlreadyExists,
    /// A step ran past its time limit.
    TimedOut,
    /// A client cancelled the job.
    Cancelled,
    /// The server shut down while the job was queued or running.
    Interrupted,
    /// A step's command failed or printed something unexpected.
    StepFailed,
    /// The job's task ended without a result, which is a bug in the service.
    Internal,
}

impl FailureKind {
    pub const ALL: [FailureKind; 7] = [
        FailureKind::InvalidName,
        FailureKind::AlreadyExists,
        FailureKind::TimedOut,
        FailureKind::Cancelled,
        FailureKind::Interrupted,
        FailureKind::StepFailed,
        FailureKind::Internal,
    ];

    pub fn of(error: &ImportError) -> Self {
        match error {
            ImportError::InvalidName(_) => FailureKind::InvalidName,
            ImportError::AlreadyExists { .. } => FailureKind::AlreadyExists,
            ImportError::TimedOut { .. } => FailureKind::TimedOut,
            ImportError::Cancelled { .. } => FailureKind::Cancelled,
            ImportError::Step { .. } | ImportError::JailsMissing { .. } | ImportError::Ready { .. } => FailureKind::StepFailed,
        }
    }
}

/// API paths of a job and its template, shared by the job view and the HTTP layer.
pub fn logs_path(id: JobId) -> String {
    format!("/templates/builds/{id}/logs")
}

pub fn events_path(id: JobId) -> String {
    format!("/templates/builds/{id}/events")
}

pub fn job_path(id: JobId) -> String {
    format!("/templates/builds/{id}")
}

pub fn template_path(name: &TemplateName) -> String {
    format!("/templates/{name}")
}

/// A job as the API shows it. Fields that do not apply yet are left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobView {
    #[serde(rename = "jobID")]
    pub job_id: JobId,
    pub name: TemplateName,
    pub from: ImageRef,
    pub status: JobStatus,
    #[serde(rename = "createdAt", serialize_with = "serialize_ts")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "startedAt", serialize_with = "serialize_opt_ts", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(rename = "finishedAt", serialize_with = "serialize_opt_ts", skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The step being run; set only while the job is `running`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(rename = "sizeBytes", skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when a client cancelled the job.
    pub cancelled: bool,
    #[serde(skip)]
    pub failure: Option<FailureKind>,
    #[serde(rename = "logsURL")]
    pub logs_url: String,
    #[serde(rename = "eventsURL")]
    pub events_url: String,
    #[serde(rename = "templateURL")]
    pub template_url: String,
}

fn serialize_ts<S: Serializer>(ts: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_ts(*ts))
}

fn serialize_opt_ts<S: Serializer>(ts: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => serializer.serialize_str(&format_ts(*ts)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_its_own_names() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("Queued"), None);
        assert_eq!(JobStatus::parse("done"), None);
    }

    #[test]
    fn queued_view_serializes_without_unset_fields() {
        let id = JobId::parse("8b5c0f6e-7d1a-4c1e-9a7e-2f0a7f9e1c3d").unwrap();
        let name = TemplateName::parse("fbsd14-min").unwrap();
        let view = JobView {
            job_id: id,
            name: name.clone(),
            from: ImageRef::parse_source("oci:quay.io/dougrabson/freebsd14-minimal").unwrap(),
            status: JobStatus::Queued,
            created_at: DateTime::from_timestamp_micros(1_777_118_400_000_001).unwrap(),
            started_at: None,
            finished_at: None,
            step: None,
            snapshot: None,
            size_bytes: None,
            error: None,
            cancelled: false,
            failure: None,
            logs_url: logs_path(id),
            events_url: events_path(id),
            template_url: template_path(&name),
        };

        let json = serde_json::to_string(&view).unwrap();

        assert_eq!(
            json,
            concat!(
                r#"{"jobID":"8b5c0f6e-7d1a-4c1e-9a7e-2f0a7f9e1c3d","name":"fbsd14-min","#,
                r#""from":"oci:quay.io/dougrabson/freebsd14-minimal","status":"queued","#,
                r#""createdAt":"2026-04-25T12:00:00.000001Z","cancelled":false,"#,
                r#""logsURL":"/templates/builds/8b5c0f6e-7d1a-4c1e-9a7e-2f0a7f9e1c3d/logs","#,
                r#""eventsURL":"/templates/builds/8b5c0f6e-7d1a-4c1e-9a7e-2f0a7f9e1c3d/events","#,
                r#""templateURL":"/templates/fbsd14-min"}"#
            )
        );
    }

    #[test]
    fn job_id_rejects_non_uuids() {
        assert!(JobId::parse("not-a-uuid").is_none());
        assert!(JobId::parse("").is_none());
    }
}
