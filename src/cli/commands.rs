//! The CLI commands. Each runs through the same runner and executor as the server.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use serde_json::{Value, json};
use uuid::Uuid;

use coppice::exec::RunOptions;
use coppice::import::{self, ImportConfig, ImportError, ImportRequest, StepRunner};
use coppice::line::{DiscardSink, LineStamper, Step};
use coppice::names::{Dataset, ImageRef, TemplateName};
use coppice::steps::{self, ContainerName, DatasetProperty, ImageId, Template};
use coppice::templates::TemplateRegistry;

use super::args::{Cli, Command, ImportArgs, StepCommand, TemplatesArgs};
use super::print::PrintSink;
use super::signals;
use super::serve::serve;

/// Exit status of a failed import or step.
pub(super) const EXIT_FAILED: u8 = 1;
/// Exit status of bad input found before any command ran.
const EXIT_USAGE: u8 = 2;
/// Exit status after SIGINT or SIGTERM stopped the work, as shells report a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

pub async fn run(cli: Cli) -> ExitCode {
    let config = cli.global.import_config();

    match cli.command {
        Command::Import(args) => import(&config, args).await,
        Command::Step(step) => run_step(&config, step).await,
        Command::Templates(args) => templates(&config, args).await,
        Command::Serve(args) => serve(config, args).await,
    }
}

async fn import(config: &ImportConfig, args: ImportArgs) -> ExitCode {
    let sink = PrintSink { json: args.output.json };
    let stamper = LineStamper::new(&sink);
    let registry = TemplateRegistry::default();
    let request = ImportRequest { id: Uuid::new_v4(), name: args.name, from: args.from };
    let cancel = cancel_on_signal();

    let result = import::run_import(config, &request, &stamper, &cancel, &registry).await;

    match result {
        Ok(imported) => {
            if args.output.json {
                print_result(true, &[("template", json!(request.name)), ("snapshot", json!(imported.snapshot)), ("sizeBytes", json!(imported.size_bytes))]);
            } else {
                let size = imported.size_bytes.map_or_else(|| "unknown".to_owned(), |bytes| format!("{bytes} bytes"));
                println!("template {} is ready: snapshot {}, size {size}", request.name, imported.snapshot);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("coppice: import of {} failed: {error}", request.name);
            ExitCode::from(exit_code_of(&error))
        }
    }
}

fn exit_code_of(error: &ImportError) -> u8 {
    match error {
        ImportError::Cancelled { .. } => EXIT_INTERRUPTED,
        ImportError::InvalidName(_) => EXIT_USAGE,
        _ => EXIT_FAILED,
    }
}

/// Returns a token cancelled by the first SIGINT or SIGTERM, telling the operator so.
fn cancel_on_signal() -> CancellationToken {
    signals::cancel_on_signal(|name| eprintln!("coppice: received {name}, stopping the running command and cleaning up"))
}

async fn run_step(config: &ImportConfig, command: StepCommand) -> ExitCode {
    let json = match &command {
        StepCommand::Pull { output, .. }
        | StepCommand::Mount { output, .. }
        | StepCommand::Rsync { output, .. }
        | StepCommand::Snapshot { output, .. }
        | StepCommand::Reload { output }
        | StepCommand::Cleanup { output, .. } => output.json,
    };
    let sink = PrintSink { json };
    let stamper = LineStamper::new(&sink);
    let options = RunOptions { cancel: cancel_on_signal(), grace: config.grace, ..RunOptions::default() };
    let runner = StepRunner::new(config, &stamper, &options);

    let result = match command {
        StepCommand::Pull { from, .. } => step_pull(&runner, config, &from).await,
        StepCommand::Mount { image_id, container, .. } => step_mount(&runner, &image_id, container).await,
        StepCommand::Rsync { name, mount_path, from, .. } => step_rsync(&runner, config, &name, &mount_path, from).await,
        StepCommand::Snapshot { name, .. } => step_snapshot(&runner, config, &name).await,
        StepCommand::Reload { .. } => step_reload(&runner, config, json).await,
        StepCommand::Cleanup { container, destroy, .. } => step_cleanup(&runner, config, container, destroy).await,
    };

    match result {
        Ok(fields) => {
            print_result(json, &fields);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("coppice: {error}");
            ExitCode::from(exit_code_of(&error))
        }
    }
}

/// The result of a single step: named values printed after its output lines.
type StepResult = Result<Vec<(&'static str, Value)>, ImportError>;

/// Prints a result as `name value` lines, or with `--json` as one object
/// `{"result": {...}}`, so that every line of JSON output parses.
fn print_result(json: bool, fields: &[(&'static str, Value)]) {
    if json {
        let result: serde_json::Map<String, Value> = fields.iter().map(|(name, value)| ((*name).to_owned(), value.clone())).collect();
        println!("{}", json!({ "result": result }));
        return;
    }
    for (name, value) in fields {
        match value {
            Value::String(text) => println!("{name} {text}"),
            Value::Null => println!("{name} unknown"),
            Value::Array(_) => {}
            other => println!("{name} {other}"),
        }
    }
}

async fn step_pull(runner: &StepRunner<'_>, config: &ImportConfig, from: &ImageRef) -> StepResult {
    let context = runner.enter(Step::Pull);
    let image = runner.step(Step::Pull, steps::pull(context, from, config.arch.as_deref())).await?;
    Ok(vec![("image", json!(image.as_str()))])
}

async fn step_mount(runner: &StepRunner<'_>, image: &ImageId, container: Option<String>) -> StepResult {
    let container = container.map_or_else(|| ContainerName::for_import(Uuid::new_v4()), |name| ContainerName::from_existing(&name));

    let context = runner.enter(Step::Mount);
    let mounted = runner.step(Step::Mount, steps::mount(context, image, &container)).await?;
    Ok(vec![("container", json!(mounted.container.as_str())), ("path", json!(mounted.path))])
}

async fn step_rsync(
    runner: &StepRunner<'_>,
    config: &ImportConfig,
    name: &TemplateName,
    mount_path: &std::path::Path,
    from: Option<ImageRef>,
) -> StepResult {
    let dataset = config.jails.template(name)?;
    let mut properties = vec![DatasetProperty { name: "coppice:job", value: Uuid::new_v4().to_string() }];
    if let Some(from) = from {
        properties.push(DatasetProperty { name: "coppice:from", value: from.source() });
    }

    let context = runner.enter(Step::Rsync);
    runner.step(Step::Rsync, steps::create_dataset(context, &dataset, &properties)).await?;

    // A single step leaves what it made for the operator to inspect, so the error
    // names the command that removes it.
    let copied = async {
        let mountpoint = runner.step(Step::Rsync, steps::read_mountpoint(context, &dataset)).await?;
        runner.step(Step::Rsync, steps::copy(context, mount_path, &mountpoint)).await?;
        Ok::<_, ImportError>(mountpoint)
    };
    let mountpoint = copied.await.inspect_err(|_| {
        eprintln!("coppice: {dataset} was created and is left as it is; remove it with `coppice step cleanup --destroy {name}`");
    })?;
    Ok(vec![("dataset", json!(dataset.as_str())), ("mountpoint", json!(mountpoint))])
}

async fn step_snapshot(runner: &StepRunner<'_>, config: &ImportConfig, name: &TemplateName) -> StepResult {
    let dataset = config.jails.template(name)?;

    let context = runner.enter(Step::Snapshot);
    let (snapshot, size) = runner.step(Step::Snapshot, steps::snapshot(context, &dataset)).await?;
    Ok(vec![("snapshot", json!(snapshot)), ("sizeBytes", json!(size))])
}

async fn step_reload(runner: &StepRunner<'_>, config: &ImportConfig, json: bool) -> StepResult {
    let context = runner.enter(Step::Reload);
    let templates = runner.step(Step::Reload, steps::list_templates(context, &config.jails)).await?;
    if !json {
        print_templates(&templates, false);
    }
    Ok(vec![("templates", json!(templates))])
}

async fn step_cleanup(
    runner: &StepRunner<'_>,
    config: &ImportConfig,
    container: Option<String>,
    destroy: Option<TemplateName>,
) -> StepResult {
    let context = runner.enter(Step::Cleanup);
    let mut fields = Vec::new();

    if let Some(container) = container {
        let container = ContainerName::from_existing(&container);
        runner.step(Step::Cleanup, steps::remove_container(context, &container)).await?;
        fields.push(("removedContainer", json!(container.as_str())));
    }

    if let Some(name) = destroy {
        let dataset: Dataset = config.jails.template(&name)?;
        // A dataset with @base is a ready template that sandboxes may clone; cleanup
        // only removes unfinished ones.
        if runner.step(Step::Cleanup, steps::has_base_snapshot(context, &dataset)).await? {
            return Err(ImportError::Ready { name, dataset: dataset.to_string() });
        }
        runner.step(Step::Cleanup, steps::destroy_dataset(context, &dataset)).await?;
        fields.push(("destroyedDataset", json!(dataset.as_str())));
    }
    Ok(fields)
}

async fn templates(config: &ImportConfig, args: TemplatesArgs) -> ExitCode {
    let stamper = LineStamper::new(&DiscardSink);
    let options = RunOptions { grace: config.grace, ..RunOptions::default() };
    let runner = StepRunner::new(config, &stamper, &options);

    let context = runner.enter(Step::Reload);
    match runner.step(Step::Reload, steps::list_templates(context, &config.jails)).await {
        Ok(templates) => {
            print_templates(&templates, args.json);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("coppice: failed to list templates under {}: {error}", config.jails);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn print_templates(templates: &[Template], json: bool) {
    if json {
        match serde_json::to_string_pretty(templates) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("coppice: failed to encode templates: {error}"),
        }
        return;
    }
    if templates.is_empty() {
        println!("no templates");
        return;
    }
    println!("{:<24} {:>14} {:<20} FROM", "NAME", "SIZE (BYTES)", "CREATED (UTC)");
    for template in templates {
        let size = template.size_bytes.map_or_else(|| "-".to_owned(), |bytes| bytes.to_string());
        let created = template.created_at.map_or_else(|| "-".to_owned(), |ts| ts.format("%Y-%m-%d %H:%M:%S").to_string());
        println!("{:<24} {size:>14} {created:<20} {}", template.name, template.from.as_deref().unwrap_or("-"));
    }
}
