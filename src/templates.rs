//! The in-memory template registry, rebuilt from ZFS by the reload step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::time::Instant;

use crate::exec::{RunOptions, StepLog};
use crate::import::ImportConfig;
use crate::line::{DiscardSink, LineStamper, Step};
use crate::steps::{self, StepContext, StepError, Template};

/// The ready templates, replaced as a whole on every reload so readers never see a
/// half-updated list.
///
/// Listings can overlap (a job's reload step and a request's refresh), so each one
/// takes a [`ListingTicket`] before it starts and a listing replaces the registry only
/// if no listing that started later has replaced it already.
#[derive(Default)]
pub struct TemplateRegistry {
    templates: RwLock<Listing>,
    next_ticket: AtomicU64,
}

#[derive(Default)]
struct Listing {
    ticket: u64,
    templates: Arc<Vec<Template>>,
}

/// The start order of a listing from ZFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListingTicket(u64);

impl TemplateRegistry {
    /// Takes the ticket of a listing that is about to start.
    pub fn ticket(&self) -> ListingTicket {
        ListingTicket(self.next_ticket.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Replaces the templates with a listing that started at `ticket`, unless a listing
    /// that started later is already in place.
    pub fn replace_from(&self, ticket: ListingTicket, templates: Vec<Template>) {
        let mut listing = self.templates.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ticket.0 > listing.ticket {
            *listing = Listing { ticket: ticket.0, templates: Arc::new(templates) };
        }
    }

    /// Replaces the templates unconditionally, as with a listing that started now.
    pub fn replace(&self, templates: Vec<Template>) {
        let ticket = self.ticket();
        self.replace_from(ticket, templates);
    }

    /// Returns all templates, sorted by name.
    pub fn list(&self) -> Arc<Vec<Template>> {
        Arc::clone(&self.templates.read().unwrap_or_else(|poisoned| poisoned.into_inner()).templates)
    }

    pub fn get(&self, name: &str) -> Option<Template> {
        self.list().iter().find(|template| template.name == name).cloned()
    }

    /// Replaces the templates with a fresh listing from ZFS, made by the import's reload
    /// step, and returns how many there are. The listing's output lines are discarded;
    /// a failure's error carries the command and its last stderr lines.
    pub async fn reload(&self, config: &ImportConfig) -> Result<usize, StepError> {
        let stamper = LineStamper::new(&DiscardSink);
        let options = RunOptions { grace: config.grace, ..RunOptions::default() };
        let context = StepContext {
            tools: &config.tools,
            log: StepLog { stamper: &stamper, step: Step::Reload },
            options: &options,
            deadline: Some(Instant::now() + config.timeouts.reload),
        };

        let ticket = self.ticket();
        let templates = steps::list_templates(context, &config.jails).await?;

        let count = templates.len();
        self.replace_from(ticket, templates);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str) -> Template {
        Template {
            name: name.to_owned(),
            dataset: format!("zroot/jails/{name}-template"),
            snapshot: format!("zroot/jails/{name}-template@base"),
            size_bytes: None,
            created_at: None,
            from: None,
        }
    }

    #[test]
    fn older_listing_does_not_replace_newer() {
        let registry = TemplateRegistry::default();
        let older = registry.ticket();
        let newer = registry.ticket();

        registry.replace_from(newer, vec![template("new")]);
        registry.replace_from(older, vec![]);

        assert_eq!(registry.list().len(), 1);
        assert!(registry.get("new").is_some());
    }
}
