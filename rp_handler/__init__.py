"""The names the user's guides give the image's handler (`rp_handler.serverless`)."""
