"""A physically grounded synthetic Copernicus world, deterministic from a seed.

All 12 modalities of a cell, mutually consistent and at native resolution:
terrain (``landscape``), per-observation weather and sun (``observation``),
Sentinel-2 L2A / L1C and the cloud mask (``optical``), Sentinel-1 RTC
(``radar``), assembled per product by ``world.make_cell`` and written in the
Major TOM layout by ``writer.write_majortom``, so ``datasets.majortom`` reads it
like real data. Several observations of one cell share DEM and land cover and
differ in date, season, clouds, haze and moisture.
"""
from copgen_jax.datasets.synthetic.geometry import cell_grid, cell_id_for, cell_latlon, sample_cells
from copgen_jax.datasets.synthetic.world import SENSORS, SyntheticCell, make_cell, product_ids
from copgen_jax.datasets.synthetic.writer import write_cell, write_majortom

__all__ = ["SENSORS", "SyntheticCell", "cell_grid", "cell_id_for", "cell_latlon", "make_cell", "product_ids",
           "sample_cells", "write_cell", "write_majortom"]
