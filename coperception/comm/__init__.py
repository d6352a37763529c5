"""Communication: what agents send each other, in how many real bytes.

* :mod:`.message`: typed messages and payload kinds (dense, sparse cells, codebook indices, boxes);
* :mod:`.wire`: the versioned, checksummed binary encoding; the bytes an agent sends are
  ``len(encode(message))``;
* :mod:`.entropy`: entropy coding of integer streams (codes, cell indices);
* :mod:`.channel`: a seeded lossy, delayed, budgeted channel with pose noise;
* :mod:`.volume`: bytes / log2(bytes) / Mbps accounting.
"""

from coperception.comm.channel import Channel
from coperception.comm.message import Boxes, CodebookIndices, Composite, DenseFeatures, Empty, Message, SparseCells
from coperception.comm.volume import CommStats, log2_bytes, mbps
from coperception.comm.wire import WireLimits, decode, encode, min_message_bytes

__all__ = ["Boxes", "Channel", "CodebookIndices", "CommStats", "Composite", "DenseFeatures", "Empty", "Message",
           "SparseCells", "WireLimits", "decode", "encode", "log2_bytes", "mbps", "min_message_bytes"]
