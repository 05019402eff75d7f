//! The in-memory template registry, rebuilt from ZFS by the reload step.

use std::sync::{Arc, RwLock};

use crate::steps::Template;

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

    /// All templates, sorted by name.
    pub fn list(&self) -> Arc<Vec<Template>> {
        Arc::clone(&self.templates.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn get(&self, name: &str) -> Option<Template> {
        self.list().iter().find(|template| template.name == name).cloned()
    }
}
