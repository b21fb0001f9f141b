"""Developer tools (not installed): building the Blender extension, README figures."""
