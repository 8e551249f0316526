"""The offline feature stage: manifest to HDF5 shards, on several processes and machines."""
