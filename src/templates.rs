//! The in-memory template registry, rebuilt from ZFS by the reload step.

use std::sync::{Arc, RwLock};

use crate::exec::RunOptions;
use crate::import::{ImportConfig, ImportError, StepRunner};
use crate::line::{DiscardSink, LineStamper, Step};
use crate::steps::{self, Template};

/// The ready templates, replaced as a whole on every reload so readers never see a
/// half-updated list.
#[derive(Default)]
pub struct TemplateRegistry {
    templates: RwLock<Arc<Vec<Template>>>,
}

impl TemplateRegistry {
    pub fn replace(&self, templates: Vec<Template>) {
        *self.templates.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(templates);
    }

    /// Returns all templates, sorted by name.
    pub fn list(&self) -> Arc<Vec<Template>> {
        Arc::clone(&self.templates.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn get(&self, name: &str) -> Option<Template> {
        self.list().iter().find(|template| template.name == name).cloned()
    }

    /// Replaces the templates with a fresh listing from ZFS, made by the import's reload
    /// step, and returns how many there are. The listing's output lines are discarded;
    /// a failure's error carries the command and its last stderr lines.
    pub async fn reload(&self, config: &ImportConfig) -> Result<usize, ImportError> {
        let stamper = LineStamper::new(&DiscardSink);
        let options = RunOptions { grace: config.grace, ..RunOptions::default() };
        let runner = StepRunner::new(config, &stamper, &options);

        let context = runner.enter(Step::Reload);
        let templates = runner.step(Step::Reload, steps::list_templates(context, &config.jails)).await?;

        let count = templates.len();
        self.replace(templates);
        Ok(count)
    }
}
