"""Matrix memories (``linear``, ``swla``): naive reference, parallel PyTorch path, recurrent step."""
