"""Music for a video, or for every clip of a cached split, on one or many processes."""
