"""Recordings and the feature cache: the manifest, media decoding, HDF5 shards, cached clips."""
