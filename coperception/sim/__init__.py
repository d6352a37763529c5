"""Embedded driving world and multi-agent dataset generator (no CARLA server needed).

A seeded grid town (:mod:`~coperception.sim.world`, :mod:`~coperception.sim.roads`,
:mod:`~coperception.sim.ground`), traffic with IDM car-following and signals
(:mod:`~coperception.sim.traffic`), connected vehicles and road-side units sensing with ray-cast
LiDARs and cameras (:mod:`~coperception.sim.lidar`, :mod:`~coperception.sim.camera`,
:mod:`~coperception.sim.raycast`), assembled into :class:`~coperception.structures.records.Frame` s by
:class:`coperception.sim.simulation.Simulation`; presets in :mod:`~coperception.sim.scenarios`;
datasets written by :func:`coperception.sim.generator.generate` (CLI: ``coperception generate``).

Nothing is imported here, so that ``coperception --help`` does not load Open3D.
"""
