//! Reload: list the ready templates (`<jails>/<name>-template@base`) from ZFS.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::context::{StepContext, StepError, Tools, run_step_command};
use super::snapshot::BASE_SNAPSHOT;
use crate::exec::{Command, RunOptions};
use crate::line::Stream;
use crate::names::Dataset;

/// One ready template, as the registry and the API show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub name: String,
    pub dataset: String,
    pub snapshot: String,
    pub size_bytes: Option<u64>,
    #[serde(serialize_with = "serialize_opt_ts")]
    pub created_at: Option<DateTime<Utc>>,
    /// The `coppice:from` property; absent for a template this service did not import.
    pub from: Option<String>,
}

fn serialize_opt_ts<S: serde::Serializer>(ts: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => serializer.serialize_str(&crate::line::format_ts(*ts)),
        None => serializer.serialize_none(),
    }
}

/// Builds one `zfs get` over the jails dataset. `-d 2` reaches the snapshots of its
/// children and no deeper, and `-p` prints sizes in bytes and times in epoch seconds.
/// `zfs list -p` would be simpler but zfs-fuse does not accept it.
pub fn list_command(tools: &Tools, jails: &Dataset) -> Command {
    Command::new(&tools.zfs).args([
        "get",
        "-Hp",
        "-d",
        "2",
        "-o",
        "name,property,value",
        "referenced,creation,coppice:from",
        jails.as_str(),
    ])
}

/// Parses `zfs get -H` rows into the templates under `jails`, sorted by name.
pub fn parse_templates(jails: &Dataset, rows: &[String]) -> Vec<Template> {
    let prefix = format!("{jails}/");
    let suffix = format!("-template@{BASE_SNAPSHOT}");
    let mut templates: BTreeMap<String, Template> = BTreeMap::new();

    for row in rows {
        let mut fields = row.splitn(3, '\t');
        let (Some(snapshot), Some(property), Some(value)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Some(name) = snapshot
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .filter(|name| !name.contains('/'))
        else {
            continue;
        };

        let template = templates.entry(name.to_owned()).or_insert_with(|| Template {
            name: name.to_owned(),
            dataset: format!("{prefix}{name}-template"),
            snapshot: snapshot.to_owned(),
            size_bytes: None,
            created_at: None,
            from: None,
        });
        match property {
            "referenced" => template.size_bytes = value.parse().ok(),
            "creation" => template.created_at = value.parse().ok().and_then(|secs| DateTime::from_timestamp(secs, 0)),
            "coppice:from" if value != "-" => template.from = Some(value.to_owned()),
            _ => {}
        }
    }
    templates.into_values().collect()
}

/// Lists the templates. The `zfs get` rows (three per dataset and snapshot under the
/// jails dataset) are parsed but not logged, because on a busy pool they would crowd
/// a job's bounded log. One summary line takes their place.
pub async fn list_templates(context: StepContext<'_>, jails: &Dataset) -> Result<Vec<Template>, StepError> {
    let command = list_command(context.tools, jails);
    let options = RunOptions { log_stdout: false, ..context.options.clone() };
    let finished = run_step_command(StepContext { options: &options, ..context }, &command, true).await?;

    let templates = parse_templates(jails, &finished.stdout);
    context.log.emit(
        Stream::Stdout,
        format!("coppice: {} templates under {jails} ({} rows of zfs get output not shown)", templates.len(), finished.stdout.len()),
    );
    Ok(templates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_argv_reads_three_properties() {
        let jails = Dataset::parse("zroot/jails").unwrap();

        let command = list_command(&Tools::default(), &jails);

        assert_eq!(
            command.arg_strings(),
            ["get", "-Hp", "-d", "2", "-o", "name,property,value", "referenced,creation,coppice:from", "zroot/jails"]
        );
    }

    #[test]
    fn parse_keeps_only_base_snapshots_of_templates() {
        let jails = Dataset::parse("zroot/jails").unwrap();
        let rows: Vec<String> = [
            "zroot/jails\treferenced\t1000",
            "zroot/jails/web-template\treferenced\t2000",
            "zroot/jails/web-template@base\treferenced\t3000",
            "zroot/jails/web-template@base\tcreation\t1796413966",
            "zroot/jails/web-template@base\tcoppice:from\toci:127.0.0.1:5000/web:1",
            "zroot/jails/hand-template@base\treferenced\t10",
            "zroot/jails/hand-template@base\tcoppice:from\t-",
            "zroot/jails/web-template@other\treferenced\t1",
            "zroot/jails/sandbox1@base\treferenced\t1",
            "zroot/jails/a/b-template@base\treferenced\t1",
            "malformed row",
        ]
        .map(str::to_owned)
        .to_vec();

        let templates = parse_templates(&jails, &rows);

        assert_eq!(templates.len(), 2);
        assert_eq!(templates[0].name, "hand");
        assert_eq!(templates[0].from, None);
        assert_eq!(templates[0].size_bytes, Some(10));
        let web = &templates[1];
        assert_eq!(web.name, "web");
        assert_eq!(web.dataset, "zroot/jails/web-template");
        assert_eq!(web.snapshot, "zroot/jails/web-template@base");
        assert_eq!(web.size_bytes, Some(3000));
        assert_eq!(web.from.as_deref(), Some("oci:127.0.0.1:5000/web:1"));
        assert_eq!(web.created_at, DateTime::from_timestamp(1_796_413_966, 0));
    }
}
