"""Write tests/golden/dfloat11_project_module.safetensors with the DFloat11 project's own
encoder (dfloat11 0.5.0's dfloat11_utils + dahuffman), so that nzip's reader is tested on
bytes nzip did not write. Run once with the wheel unpacked:
    python tests/golden/make_dfloat11_project.py /path/to/unpacked/dfloat11
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, sys.argv[1])
import dfloat11_utils as df11  # noqa: E402

g = torch.Generator().manual_seed(1)
weights = [(torch.randn(30000, generator=g) * 0.02).bfloat16(), (torch.randn(96, 200, generator=g) * 0.05).bfloat16()]
_, counter = df11.get_codec(torch.cat([w.flatten() for w in weights]))
codec, _, table = df11.get_32bit_codec(counter)
luts = df11.get_luts(table)
encoded, other, positions, gaps, split = df11.encode_weights([w.flatten() for w in weights], codec, 8, 512)
save_file({
    "block.luts": luts, "block.encoded_exponent": encoded, "block.sign_mantissa": other,
    "block.output_positions": positions.view(torch.uint8), "block.gaps": gaps, "block.split_positions": split,
    "reference.a": weights[0], "reference.b": weights[1],
}, str(Path(__file__).with_name("dfloat11_project_module.safetensors")))
