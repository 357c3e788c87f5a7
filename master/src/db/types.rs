//! Plain data carried in and out of the [`Store`](super::Store): inputs such as
//! [`NewBuildset`], rows such as [`RequestRow`], and the [`Results`] codes.
//!
//! Every time here is the database's clock, in UTC; rows serialize times as
//! RFC 3339 and use the field names of the HTTP API (see docs/http-api.md).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `masters.id`: one row per boot of a master.
pub type MasterId = i64;

/// `buildrequests.id`, where it crosses the claim protocol's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub i64);

/// `builders.id`, where it crosses the claim protocol's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BuilderId(pub i64);

/// Which database a [`Store`](super::Store) talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    MySql,
    Sqlite,
}

/// The outcome of a build, request or buildset, stored as 0..6 as Buildbot does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Results {
    Success = 0,
    Warnings = 1,
    Failure = 2,
    Skipped = 3,
    Exception = 4,
    Retry = 5,
    Cancelled = 6,
}

impl Results {
    pub const ALL: [Results; 7] = [
        Results::Success,
        Results::Warnings,
        Results::Failure,
        Results::Skipped,
        Results::Exception,
        Results::Retry,
        Results::Cancelled,
    ];

    pub fn from_i64(v: i64) -> Option<Results> {
        usize::try_from(v)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    pub fn as_i64(self) -> i64 {
        self as i64
    }

    pub fn name(self) -> &'static str {
        match self {
            Results::Success => "success",
            Results::Warnings => "warnings",
            Results::Failure => "failure",
            Results::Skipped => "skipped",
            Results::Exception => "exception",
            Results::Retry => "retry",
            Results::Cancelled => "cancelled",
        }
    }

    /// Badness, as Buildbot's `worst_status` ranks outcomes: the higher, the
    /// worse. Not the stored code (Skipped is better than Warnings).
    pub fn rank(self) -> u8 {
        match self {
            Results::Success => 0,
            Results::Skipped => 1,
            Results::Warnings => 2,
            Results::Failure => 3,
            Results::Exception => 4,
            Results::Retry => 5,
            Results::Cancelled => 6,
        }
    }

    /// The worse of two outcomes, as Buildbot's `worst_status` ranks them.
    pub fn worst(self, other: Results) -> Results {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Results {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Results {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown results {s:?}"))
    }
}

/// Where the schema stands relative to the migrations built into this binary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SchemaStatus {
    /// Highest applied migration, `None` on an empty database.
    pub current: Option<i64>,
    /// Highest migration this binary knows.
    pub latest: i64,
    /// Migrations this binary would apply: (version, description).
    pub pending: Vec<(i64, String)>,
    /// The database has applied migrations this binary does not know.
    pub newer_than_binary: bool,
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && !self.newer_than_binary
    }
}

/// One boot of a master (`masters` row).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MasterRow {
    pub id: MasterId,
    pub name: String,
    pub boot_time: DateTime<Utc>,
    pub nonce: String,
    pub active: bool,
    pub draining: bool,
    pub last_active: DateTime<Utc>,
}

/// What [`Store::renew_claims`](super::Store::renew_claims) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// Still ours; `claimed_at` is now.
    pub renewed: Vec<i64>,
    /// No longer ours (released, taken over, or completed): stop their builds.
    pub lost: Vec<i64>,
}

/// A patch applied on top of a source stamp (`flotilla try`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    pub body: Vec<u8>,
    pub level: i32,
    pub subdir: Option<String>,
    pub author: String,
    pub comment: String,
}

/// What to build: one codebase at one revision, maybe with a patch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    pub repository: String,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub project: String,
    pub codebase: String,
    pub patch: Option<Patch>,
}

/// A change submitted by `sendchange`, a webhook or a poller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NewChange {
    pub author: String,
    pub comments: String,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub repository: String,
    pub project: String,
    pub codebase: String,
    pub files: Vec<String>,
    pub properties: BTreeMap<String, serde_json::Value>,
    pub category: Option<String>,
    /// When the change happened; `None` = the database's now.
    pub when: Option<DateTime<Utc>>,
}

/// A buildset to create with one build request per builder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NewBuildset {
    pub reason: String,
    pub external_idstring: Option<String>,
    pub scheduler: Option<String>,
    pub sourcestamps: Vec<SourceStamp>,
    pub properties: BTreeMap<String, serde_json::Value>,
    /// (builder id, priority) — one request each.
    pub builders: Vec<(i64, i32)>,
    pub parent_buildid: Option<i64>,
    /// The changes behind it (`changes.changeid`), recorded as its provenance.
    #[serde(default)]
    pub change_ids: Vec<i64>,
}

/// Everything a master needs to run a request it has claimed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestDetails {
    pub id: i64,
    pub buildset_id: i64,
    pub builder_id: i64,
    pub builder: String,
    pub priority: i32,
    pub submitted_at: DateTime<Utc>,
    pub reason: String,
    pub sourcestamps: Vec<SourceStamp>,
    pub properties: BTreeMap<String, serde_json::Value>,
    /// The changes behind its buildset.
    pub change_ids: Vec<i64>,
}

/// Filter for [`Store::list_requests`](super::Store::list_requests).
/// `limit <= 0` means no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestFilter {
    pub complete: Option<bool>,
    pub builder: Option<String>,
    pub buildset_id: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

/// A build request as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestRow {
    pub id: i64,
    pub buildset_id: i64,
    pub builder: String,
    pub priority: i32,
    pub submitted_at: DateTime<Utc>,
    /// The claiming master's name.
    pub claimed_by_master: Option<String>,
    pub claimed_by_masterid: Option<i64>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub complete: bool,
    pub complete_at: Option<DateTime<Utc>>,
    pub results: Option<Results>,
    #[serde(flatten)]
    pub source: SourceSummary,
}

/// Where a build or request came from, in brief: its buildset's reason and
/// first source stamp (the whole story is [`BuildsetInfo`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SourceSummary {
    pub reason: String,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub revision: Option<String>,
}

/// A source stamp as the API shows it: the patch only as whether there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceStampInfo {
    pub id: i64,
    pub repository: String,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub project: String,
    pub codebase: String,
    pub patch: bool,
    pub patch_author: Option<String>,
    pub patch_comment: Option<String>,
}

/// A buildset with its provenance: source stamps, the changes behind it,
/// why it was made, and its properties.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BuildsetInfo {
    pub id: i64,
    pub reason: String,
    pub scheduler: Option<String>,
    pub external_idstring: Option<String>,
    pub parent_buildid: Option<i64>,
    pub submitted_at: DateTime<Utc>,
    pub complete: bool,
    pub complete_at: Option<DateTime<Utc>>,
    pub results: Option<Results>,
    pub sourcestamps: Vec<SourceStampInfo>,
    pub changes: Vec<ChangeInfo>,
    pub properties: BTreeMap<String, serde_json::Value>,
    pub buildrequest_ids: Vec<i64>,
}

/// A build just started by [`Store::start_build`](super::Store::start_build).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildRow {
    pub id: i64,
    pub number: i64,
    pub builder_id: i64,
    pub request_id: i64,
    pub master_id: MasterId,
    pub worker_id: i64,
    pub started_at: DateTime<Utc>,
}

/// Filter for [`Store::list_builds`](super::Store::list_builds).
/// `limit <= 0` means no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildFilter {
    pub builder: Option<String>,
    pub request_id: Option<i64>,
    /// Builds of a buildset with a source stamp on this branch.
    pub branch: Option<String>,
    /// Builds of a buildset with a source stamp at this revision.
    pub revision: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// A build as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    pub id: i64,
    pub number: i64,
    pub builder: String,
    pub buildrequest_id: i64,
    /// The running master's name.
    pub master: String,
    pub worker: Option<String>,
    pub started_at: DateTime<Utc>,
    pub complete_at: Option<DateTime<Utc>>,
    pub results: Option<Results>,
    pub state_string: String,
    pub buildset_id: i64,
    #[serde(flatten)]
    pub source: SourceSummary,
}

/// A step of a build as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepRow {
    pub number: i32,
    pub name: String,
    pub started_at: Option<DateTime<Utc>>,
    pub complete_at: Option<DateTime<Utc>>,
    pub results: Option<Results>,
    pub state_string: String,
}

/// Queue depth of one builder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuilderCounts {
    pub name: String,
    /// Incomplete requests without a running build.
    pub pending: i64,
    /// Incomplete builds.
    pub running: i64,
}

/// Filter for [`Store::list_changes`](super::Store::list_changes).
/// `limit <= 0` means no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    pub branch: Option<String>,
    pub repository: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// A recorded change as the API shows it: the change, and when the
/// database recorded it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChangeInfo {
    #[serde(flatten)]
    pub change: super::ChangeRow,
    pub created_at: DateTime<Utc>,
}

/// An `object_owners` row with its master, from
/// [`Store::list_object_owners`](super::Store::list_object_owners).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectOwnerRow {
    pub kind: String,
    pub name: String,
    pub master_id: MasterId,
    /// `None` when the master row is gone.
    pub master_name: Option<String>,
    /// The owning master is active.
    pub master_active: bool,
    /// The lease was renewed within the lease the caller gave.
    pub lease_current: bool,
    pub claimed_at: DateTime<Utc>,
}

/// A claimable request as the claim loop weighs it (see
/// [`Store::claim_candidates`](super::Store::claim_candidates)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: i64,
    pub builder_id: i64,
    pub priority: i32,
    pub submitted_at: DateTime<Utc>,
}
