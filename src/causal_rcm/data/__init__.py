"""Data: the procedural shapes world with its oracle, the pixel codec, the toy text encoder, video files."""
