"""Hardware profiles of the real engine: `starserve profile` measures one, the simulator reads it.

`table` (pandas only, no torch) holds the file format and is what the simulator imports;
`measure` drives a real `Engine` and is only imported by the CLI and the benches.
"""
