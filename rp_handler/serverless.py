"""`python -m rp_handler.serverless [runpod flags]`: the RunPod worker under the name the user's
guide uses; the same program as `python -m services.serverless`, not a second one."""
from services.serverless.__main__ import main

if __name__ == "__main__":
    main()
