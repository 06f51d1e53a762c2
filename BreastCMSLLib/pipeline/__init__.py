"""The pipeline layer: volumes and grids, the breast mask, preprocessing, one analysis and its files."""
