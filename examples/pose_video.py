"""Make a pose-guided video: one person rendered frame by frame along a sequence of poses.

    python examples/pose_video.py --pipeline my-org/pose-transfer-256 --reference person.jpg \
        --reference_pose person.json --poses dance/ --output dance.gif

`--poses` is a folder of OpenPose JSON files, one per frame, taken in name order (what OpenPose
writes for a video). The frames are written as a GIF, or MP4 when the name ends in .mp4 and an
encoder (imageio-ffmpeg) is installed.
"""

import argparse
import json
from pathlib import Path

from PIL import Image

from hf_ext import PoseTransferPipeline


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--pipeline", required=True, help="Hub id or folder of a saved PoseTransferPipeline")
parser.add_argument("--reference", required=True, help="image of the person")
parser.add_argument("--reference_pose", default=None, help="OpenPose JSON of the reference image")
parser.add_argument("--poses", required=True, help="folder of OpenPose JSON files, one per frame")
parser.add_argument("--output", default="pose_video.gif")
parser.add_argument("--fps", type=float, default=10.0)
args = parser.parse_args()

poses = [json.loads(p.read_text()) for p in sorted(Path(args.poses).glob("*.json"))]
if not poses:
    raise SystemExit(f"--poses {args.poses!r} holds no .json file")
pipe = PoseTransferPipeline.from_pretrained(args.pipeline)
reference_pose = json.loads(Path(args.reference_pose).read_text()) if args.reference_pose else None
frames = pipe.generate_video(
    Image.open(args.reference), poses, reference_pose=reference_pose, output_path=args.output, fps=args.fps
)
print(f"wrote {args.output}: {len(frames)} frames")
