//! Where a new session's backend comes from: one [`BackendProvider`] per runtime version, kept
//! across config reloads while its backend spec is unchanged (and with it its warm pool and its
//! static-pool occupancy), and the version a new session starts on.

use std::path::Path;
use std::sync::Arc;

use conf::{BackendSpec, Config, Runtime};

use crate::provider::{BackendProvider, SlotRegistry};

/// The providers of one config's runtime versions.
pub struct Providers {
    /// `runtimes[runtime index]`: its name and, per version, the provider and what it was made of.
    runtimes: Vec<(String, Vec<Versioned>)>,
}

struct Versioned {
    number: u32,
    spec: BackendSpec,
    provider: Arc<BackendProvider>,
}

impl Providers {
    /// Providers for `config`'s runtime versions, made from `specs[runtime][version index]`
    /// (the versions' backend specs as the caller completed them). A provider of `previous`
    /// is kept where the runtime name, version number and spec are all unchanged.
    pub fn new(
        config: &Config,
        specs: Vec<Vec<BackendSpec>>,
        self_exe: &Path,
        slots: &SlotRegistry,
        previous: Option<&Providers>,
    ) -> Self {
        let runtimes = config
            .runtimes
            .iter()
            .zip(specs)
            .map(|(runtime, specs)| {
                let versions = runtime
                    .versions
                    .iter()
                    .zip(specs)
                    .map(|(version, spec)| {
                        let provider = previous
                            .and_then(|p| p.unchanged(&runtime.name, version.number, &spec))
                            .unwrap_or_else(|| {
                                Arc::new(BackendProvider::new(&spec, self_exe, slots))
                            });
                        Versioned {
                            number: version.number,
                            spec,
                            provider,
                        }
                    })
                    .collect();
                (runtime.name.clone(), versions)
            })
            .collect();
        Self { runtimes }
    }

    /// The provider of version `number` of runtime `runtime`, if it (still) exists.
    pub fn get(&self, runtime: usize, number: u32) -> Option<&BackendProvider> {
        let (_, versions) = self.runtimes.get(runtime)?;
        let v = versions.iter().find(|v| v.number == number)?;
        Some(&v.provider)
    }

    /// Every provider: runtime name, version number, provider.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, &BackendProvider)> {
        self.runtimes.iter().flat_map(|(name, versions)| {
            versions
                .iter()
                .map(move |v| (name.as_str(), v.number, &*v.provider))
        })
    }

    fn unchanged(
        &self,
        runtime: &str,
        number: u32,
        spec: &BackendSpec,
    ) -> Option<Arc<BackendProvider>> {
        let (_, versions) = self.runtimes.iter().find(|(name, _)| name == runtime)?;
        let v = versions.iter().find(|v| v.number == number)?;
        (v.spec == *spec).then(|| Arc::clone(&v.provider))
    }
}

/// The version a new session of `runtime` starts on: that of the endpoint `qualifier` names
/// (`DEFAULT` without one), chosen by weight when the endpoint splits traffic (`pick` is a
/// random number). `None` if the runtime has no such endpoint.
pub fn new_session_version(runtime: &Runtime, qualifier: Option<&str>, pick: u64) -> Option<u32> {
    let endpoint = runtime.endpoint(qualifier)?;
    let index = endpoint.choose(pick);
    Some(runtime.versions.get(index).map_or(1, |v| v.number))
}

/// The routing experiment a session of `version` is part of, when the endpoint `qualifier`
/// names splits versions: the endpoint's ARN and the variant (`v<version>`), which the gateway
/// hands the agent in W3C `baggage` (AgentCore's routing-experiment keys).
pub fn experiment(
    runtime: &Runtime,
    aws: &conf::Aws,
    qualifier: Option<&str>,
    version: u32,
) -> Option<(String, String)> {
    let endpoint = runtime.endpoint(qualifier)?;
    let in_split = endpoint.targets.len() > 1
        && endpoint.targets.iter().any(|(i, _)| {
            runtime
                .versions
                .get(*i)
                .is_some_and(|v| v.number == version)
        });
    in_split.then(|| {
        (
            format!(
                "arn:aws:bedrock-agentcore:{}:{}:runtime/{}/runtime-endpoint/{}",
                aws.region.as_deref().unwrap_or("local"),
                aws.account_id.as_deref().unwrap_or("000000000000"),
                runtime.name,
                endpoint.name
            ),
            format!("v{version}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u32, label: &str) -> String {
        format!(
            "[[runtimes.versions]]\nversion = {n}\n[runtimes.versions.backend]\nargs = [\"agent\", \"--label\", \"{label}\"]\n"
        )
    }

    fn config(second_label: &str) -> Config {
        let text = format!(
            "[[runtimes]]\nname = \"agent\"\n{}{}\
             [[runtimes.endpoints]]\nname = \"stable\"\nversion = 1\n\
             [[runtimes.endpoints]]\nname = \"canary\"\nsplit = [{{ version = 1, weight = 1 }}, {{ version = 2, weight = 3 }}]\n",
            version(1, "v1"),
            version(2, second_label),
        );
        conf::parse(&text).unwrap()
    }

    fn specs(c: &Config) -> Vec<Vec<BackendSpec>> {
        let backends = |r: &Runtime| r.versions.iter().map(|v| v.backend.clone()).collect();
        c.runtimes.iter().map(backends).collect()
    }

    #[test]
    fn a_reload_keeps_the_providers_of_unchanged_versions_only() {
        let (exe, slots) = (Path::new("/bin/true"), SlotRegistry::default());
        let before = config("v2");
        let first = Providers::new(&before, specs(&before), exe, &slots, None);
        let after = config("v2-changed");
        let second = Providers::new(&after, specs(&after), exe, &slots, Some(&first));
        let same = |n| std::ptr::eq(first.get(0, n).unwrap(), second.get(0, n).unwrap());
        assert!(
            same(1),
            "version 1 is unchanged: its provider (and warm pool) stays"
        );
        assert!(!same(2), "version 2's backend changed: a new provider");
        assert!(second.get(0, 3).is_none() && second.get(1, 1).is_none());
        let listed: Vec<(&str, u32)> = second.iter().map(|(r, v, _)| (r, v)).collect();
        assert_eq!(listed, [("agent", 1), ("agent", 2)]);
    }

    #[test]
    fn new_sessions_start_on_the_endpoints_version() {
        let c = config("v2");
        let runtime = &c.runtimes[0];
        assert_eq!(
            new_session_version(runtime, None, 0),
            Some(2),
            "DEFAULT: highest"
        );
        assert_eq!(new_session_version(runtime, Some("stable"), 7), Some(1));
        assert_eq!(new_session_version(runtime, Some("nope"), 0), None);
        let canary: Vec<u32> = (0..4)
            .filter_map(|pick| new_session_version(runtime, Some("canary"), pick))
            .collect();
        assert_eq!(canary, [1, 2, 2, 2], "weights 1:3");
    }
}
