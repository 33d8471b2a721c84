//! The mapping templates in use, and their hot reload.
//!
//! Readers take an `Arc` snapshot per batch; a reload swaps the snapshot only when the new
//! files load without any error, so a bad edit never replaces working templates.

use crate::config::MappingConfig;
use crate::mapping::{
    load_device_mapping, load_fhir_mapping, DeviceMapping, FhirMapping, TemplateError,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// One consistent set of templates.
#[derive(Debug)]
pub struct Mappings {
    pub device: DeviceMapping,
    pub fhir: Option<FhirMapping>,
}

/// Why templates did not load: every error, with its file.
#[derive(Debug)]
pub struct LoadFailure {
    pub errors: Vec<(PathBuf, TemplateError)>,
    pub io: Vec<(PathBuf, String)>,
}

impl LoadFailure {
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.errors.len() + self.io.len()
    }

    /// True when there is none (never for a returned failure).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Human-readable lines.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .io
            .iter()
            .map(|(p, e)| format!("{}: {e}", p.display()))
            .collect();
        out.extend(self.errors.iter().map(|(p, e)| {
            format!(
                "{}:{}:{}: {}",
                p.display(),
                e.pos.line,
                e.pos.column,
                e.message
            )
        }));
        out
    }
}

/// Loads the templates a config names.
pub fn load(cfg: &MappingConfig) -> Result<Mappings, LoadFailure> {
    let mut fail = LoadFailure {
        errors: Vec::new(),
        io: Vec::new(),
    };
    let device = match std::fs::read_to_string(&cfg.device) {
        Ok(t) => {
            let l = load_device_mapping(&t);
            fail.errors
                .extend(l.errors.into_iter().map(|e| (cfg.device.clone(), e)));
            Some(l.mapping)
        }
        Err(e) => {
            fail.io.push((cfg.device.clone(), e.to_string()));
            None
        }
    };
    let fhir = match &cfg.fhir {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => {
                let l = load_fhir_mapping(&t);
                fail.errors
                    .extend(l.errors.into_iter().map(|e| (p.clone(), e)));
                Some(l.mapping)
            }
            Err(e) => {
                fail.io.push((p.clone(), e.to_string()));
                None
            }
        },
    };
    match device {
        Some(device) if fail.is_empty() => Ok(Mappings { device, fhir }),
        _ => Err(fail),
    }
}

/// The templates in use, shared by the sink workers.
#[derive(Debug)]
pub struct TemplateSet {
    cfg: MappingConfig,
    current: RwLock<Arc<Mappings>>,
    stamp: RwLock<Vec<Option<SystemTime>>>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl TemplateSet {
    /// Loads the initial set (an error here stops the agent with the configuration exit code).
    pub fn new(cfg: MappingConfig) -> Result<Self, LoadFailure> {
        let m = load(&cfg)?;
        let stamp = Self::stamps(&cfg);
        Ok(TemplateSet {
            cfg,
            current: RwLock::new(Arc::new(m)),
            stamp: RwLock::new(stamp),
        })
    }

    fn stamps(cfg: &MappingConfig) -> Vec<Option<SystemTime>> {
        let mut v = vec![mtime(&cfg.device)];
        if let Some(f) = &cfg.fhir {
            v.push(mtime(f));
        }
        v
    }

    /// The current snapshot.
    pub fn get(&self) -> Arc<Mappings> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads now. `Ok(())` when the new set is in use; on error the old one stays.
    pub fn reload(&self) -> Result<(), LoadFailure> {
        let m = load(&self.cfg)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(m);
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = Self::stamps(&self.cfg);
        Ok(())
    }

    /// Whether the files changed since the last (attempted) load. Records the new stamps, so a
    /// failed reload is not retried until the files change again.
    pub fn changed(&self) -> bool {
        if !self.cfg.watch {
            return false;
        }
        let now = Self::stamps(&self.cfg);
        let mut s = self.stamp.write().unwrap_or_else(|e| e.into_inner());
        if *s != now {
            *s = now;
            true
        } else {
            false
        }
    }
}
