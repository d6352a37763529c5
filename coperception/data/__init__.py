"""Data: on-disk formats (OPV2V family, DAIR-V2X-C: read and write), the cooperative dataset
(a frame -> one sample per ego), voxelisation and collation. The records it produces live in
:mod:`coperception.structures`."""
