"""The MRML adapter: volume nodes, review layout, inference worker (MRML and VTK only, never Qt)."""
