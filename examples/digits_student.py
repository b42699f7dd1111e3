"""A small student for the digits CNN (examples/digits.py): under 10% of its parameters.

    edgesmith distill --teacher examples.digits:make_model \\
        --weights build/digits/model.safetensors \\
        --student examples.digits_student:make_student --data build/digits/train.npz \\
        --eval-data build/digits/calib.npz -o build/digits/student
"""

from __future__ import annotations

from torch import nn

# Same inputs and outputs as the teacher, so edgesmith exports it without flags.
EDGESMITH_SPEC = {
    "inputs": {"x": {"shape": [1, 1, 8, 8], "dtype": "float32", "dynamic": [0]}},
    "outputs": ["logits"],
}


def make_student() -> nn.Module:
    """Two 3x3 convolutions (8 and 16 channels), one pooling, a linear head: 3,818 parameters.

    The teacher (DigitsCNN) has 38,282; the budget of 10% is 3,828.
    """
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
