"""OSMF: One Size, Many Fits. Group-targeted ad creatives on a nightly data platform."""
