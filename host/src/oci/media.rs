//! The media types a plugin artifact may come as: the manifest, its config and its one
//! layer (the table is in the [`super`] module's doc).
//!
//! This module owns those lists and the check of a manifest against them; it never
//! fetches anything.

use oci_client::manifest::OciImageManifest;

/// Manifest media types accepted: the OCI image manifest and Docker v2 schema 2.
pub const MANIFESTS: &[&str] =
    &["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

/// Config media types accepted.
pub const CONFIGS: &[&str] = &[
    "application/vnd.wasm.config.v0+json",
    "application/vnd.wasm.config.v1+json",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.empty.v1+json",
    "application/vnd.unknown.config.v1+json",
];

/// Layer media types accepted (the layer holds the component's bytes as they are).
pub const LAYERS: &[&str] = &[
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.module.wasm.content.layer.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// What part of an artifact a check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The manifest itself.
    Manifest,
    /// The manifest's config.
    Config,
    /// The component layer.
    Layer,
}

impl Part {
    /// The media types accepted for this part.
    pub fn accepted(self) -> &'static [&'static str] {
        match self {
            Part::Manifest => MANIFESTS,
            Part::Config => CONFIGS,
            Part::Layer => LAYERS,
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Manifest => "manifest",
            Part::Config => "config",
            Part::Layer => "layer",
        })
    }
}

/// Why a manifest is not a plugin artifact.
#[derive(Debug, PartialEq, Eq)]
pub enum Misfit {
    /// A part came with a media type outside its list.
    MediaType {
        /// Which part.
        part: Part,
        /// The media type it has.
        got: String,
    },
    /// Not exactly one layer.
    Layers(usize),
}

/// Check a parsed manifest: its own media type (when it says one), its config's, and
/// that it has exactly one layer of an accepted type.
pub fn check(manifest: &OciImageManifest) -> Result<(), Misfit> {
    let wrong = |part: Part, got: &str| Misfit::MediaType { part, got: got.to_owned() };
    if let Some(media_type) = &manifest.media_type
        && !MANIFESTS.contains(&media_type.as_str())
    {
        return Err(wrong(Part::Manifest, media_type));
    }
    if !CONFIGS.contains(&manifest.config.media_type.as_str()) {
        return Err(wrong(Part::Config, &manifest.config.media_type));
    }
    match manifest.layers.as_slice() {
        [layer] if LAYERS.contains(&layer.media_type.as_str()) => Ok(()),
        [layer] => Err(wrong(Part::Layer, &layer.media_type)),
        layers => Err(Misfit::Layers(layers.len())),
    }
}
