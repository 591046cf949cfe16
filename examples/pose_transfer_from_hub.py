"""Render a person in a new pose with a pushed `PoseTransferPipeline`.

    python examples/pose_transfer_from_hub.py --pipeline my-org/pose-transfer-256 \
        --reference person.jpg --target_pose pose.json --output person_in_pose.png

`--target_pose` is an OpenPose JSON file (`people[0].pose_keypoints_2d`, 18 COCO keypoints) or a
rendered pose image; `--reference_pose` likewise (estimated from the image with the `pose` extra
when omitted).
"""

import argparse
import json

from PIL import Image

from hf_ext import PoseTransferPipeline


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--pipeline", required=True, help="Hub id or folder of a saved PoseTransferPipeline")
parser.add_argument("--reference", required=True, help="image of the person")
parser.add_argument("--target_pose", required=True, help="OpenPose JSON or rendered pose image")
parser.add_argument("--reference_pose", default=None, help="OpenPose JSON of the reference image")
parser.add_argument("--output", default="pose_transfer.png")
args = parser.parse_args()


def load_pose(path):
    return json.load(open(path)) if path.endswith(".json") else Image.open(path)


pipe = PoseTransferPipeline.from_pretrained(args.pipeline)
reference_pose = load_pose(args.reference_pose) if args.reference_pose else None
image = pipe(Image.open(args.reference), load_pose(args.target_pose), reference_pose=reference_pose).images[0]
image.save(args.output)
print(f"wrote {args.output} ({image.width}x{image.height})")
