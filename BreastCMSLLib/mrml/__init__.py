"""The MRML adapters: each function takes the scene as an argument; the only modules importing slicer/vtk (RAS)."""
