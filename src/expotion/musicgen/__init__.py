"""audiocraft's MusicGen as a dependency: loading, text conditions, the loss, sampling, windowed generation."""
