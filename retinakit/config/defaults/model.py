"""MODEL.* defaults."""
import math

from ..config import CfgNode as CN


def add_model_config(_C: CN) -> None:
    _C.MODEL = CN()
    # "auto" picks "cuda" when available, else "cpu"; or any torch device string.
    _C.MODEL.DEVICE = "auto"
    # Weights to load before training/inference: a retinakit checkpoint, converted
    # torchvision/detectron2/ODTK weights, or ImageNet backbone weights (path or URL).
    _C.MODEL.WEIGHTS = ""
    _C.MODEL.META_ARCHITECTURE = "RetinaNet"  # META_ARCH_REGISTRY name of the detector
    # Per-channel mean/std in the order of INPUT.FORMAT, in the 0-255 range.
    _C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    _C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]  # per-channel std, same order and range as PIXEL_MEAN

    _C.MODEL.BACKBONE = CN()
    # BACKBONE_REGISTRY name; called as fn(cfg, input_shape) -> Backbone.
    _C.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    # Freeze the stem (1) and the first res stages (2: stem + res2, ... 5: everything). 0 = none.
    _C.MODEL.BACKBONE.FREEZE_AT = 2

    _C.MODEL.RESNETS = CN()
    _C.MODEL.RESNETS.DEPTH = 50  # 18, 34, 50, 101, 152
    _C.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]  # stages returned (res2..res5, strides 4..32)
    # Normalisation of the bottom-up network: "FrozenBN", "BN", "SyncBN", "GN".
    _C.MODEL.RESNETS.NORM = "FrozenBN"
    _C.MODEL.RESNETS.NUM_GROUPS = 1  # >1 gives ResNeXt
    _C.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # bottleneck width per group (ResNeXt: e.g. 4 with 32 groups)
    # False: stride on the 3x3 conv (torchvision/"pytorch" style); True: on the 1x1 (MSRA/caffe style).
    _C.MODEL.RESNETS.STRIDE_IN_1X1 = False

    # MobileNetV3 bottom-up network ("build_mobilenet_v3_backbone", "build_retinanet_mobilenet_v3_fpn_backbone").
    _C.MODEL.MOBILENETV3 = CN()
    _C.MODEL.MOBILENETV3.VARIANT = "large"  # "large" or "small"
    # Outputs returned: res2..res5 (strides 4..32; the last layer of each stride, see modeling/backbone/mobilenet.py).
    _C.MODEL.MOBILENETV3.OUT_FEATURES = ["res3", "res4", "res5"]
    # Normalisation: "FrozenBN", "BN", "SyncBN", "GN" (eps 1e-3 as the ImageNet weights).
    _C.MODEL.MOBILENETV3.NORM = "FrozenBN"
    # res5 is the final 1x1 conv (960 / 576 channels) rather than the last block (160 / 96).
    _C.MODEL.MOBILENETV3.LAST_CONV = True

    _C.MODEL.FPN = CN()
    _C.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]  # bottom-up features the pyramid is built on
    _C.MODEL.FPN.OUT_CHANNELS = 256  # channels of every pyramid level
    _C.MODEL.FPN.NORM = ""  # "", "GN", "BN"
    _C.MODEL.FPN.FUSE_TYPE = "sum"  # "sum" or "avg"
    # Where P6 comes from: "p5" (FPN output, torchvision v1) or "c5" (bottom-up res5; detectron2, torchvision v2).
    _C.MODEL.FPN.TOP_BLOCK_IN = "p5"
    # Bottom-up network for "build_retinanet_fpn_backbone": a BACKBONE_REGISTRY name.
    _C.MODEL.FPN.BOTTOM_UP = "build_resnet_backbone"

    _C.MODEL.ANCHOR_GENERATOR = CN()
    _C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"  # ANCHOR_GENERATOR_REGISTRY name
    # Base sizes in pixels, one list per level (a single list is used for every level).
    _C.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    # Each base size is multiplied by each octave scale (RetinaNet: 2^0, 2^(1/3), 2^(2/3)).
    _C.MODEL.ANCHOR_GENERATOR.OCTAVE_SCALES = [1.0, 2 ** (1.0 / 3), 2 ** (2.0 / 3)]
    # Height/width ratios, one list per level or one list for all levels.
    _C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    # Anchor centres at (i + OFFSET) * stride. 0.0 as torchvision/detectron2, 0.5 as ODTK-like centring.
    _C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0
    # Round base anchor corners to integers (torchvision does).
    _C.MODEL.ANCHOR_GENERATOR.ROUND = False
    # Use stride = padded image size // feature size per level (torchvision's rule) instead
    # of the backbone's nominal strides (they differ for P6/P7 when the padded size is not a
    # multiple of 128).
    _C.MODEL.ANCHOR_GENERATOR.STRIDES_FROM_IMAGE = False

    _C.MODEL.RETINANET = CN()
    _C.MODEL.RETINANET.NUM_CLASSES = 80  # number of foreground classes (no background class)
    _C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # backbone features the head runs on
    _C.MODEL.RETINANET.HEAD_NAME = "RetinaNetHead"  # HEAD_REGISTRY name
    _C.MODEL.RETINANET.NUM_CONVS = 4  # conv layers in each head tower
    _C.MODEL.RETINANET.NORM = ""  # "", "GN", "BN"
    _C.MODEL.RETINANET.PRIOR_PROB = 0.01  # initial foreground probability of every anchor (classifier bias)
    # Matcher: IoU < 0.4 background, [0.4, 0.5) ignored, >= 0.5 foreground.
    _C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
    _C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]  # label of each IoU band: 0 background, -1 ignore, 1 foreground
    _C.MODEL.RETINANET.ALLOW_LOW_QUALITY_MATCHES = True  # give every box its best anchor(s) even below the foreground threshold
    _C.MODEL.RETINANET.MATCHER_NAME = "IoUMatcher"  # MATCHER_REGISTRY name: "IoUMatcher" or "ATSSMatcher"
    # ATSSMatcher: candidate anchors per level and ground-truth box (nearest centres); must not
    # exceed the anchors of any level at the smallest INPUT.MIN_SIZE_TRAIN (checked when the model is built).
    _C.MODEL.RETINANET.ATSS_TOPK = 9
    _C.MODEL.RETINANET.BOX_CODER_NAME = "DeltaXYWHBoxCoder"  # BOX_CODER_REGISTRY name
    _C.MODEL.RETINANET.BBOX_REG_WEIGHTS = [1.0, 1.0, 1.0, 1.0]  # (wx, wy, ww, wh) scaling of the box deltas
    # Clamp of the predicted log-scale dw/dh before exp().
    _C.MODEL.RETINANET.BBOX_REG_SCALE_CLAMP = math.log(1000.0 / 16)
    # LOSS_REGISTRY names.
    _C.MODEL.RETINANET.CLS_LOSS_TYPE = "sigmoid_focal"
    _C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"  # "smooth_l1", "l1", "giou"
    _C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25  # focal loss weight of positives (negative: no weighting)
    _C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0  # focal loss focusing exponent
    _C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1  # smooth L1 transition point (0 = L1)
    # Losses are divided by the number of foreground anchors, smoothed by an EMA with this
    # momentum (detectron2: 0.9). 0.0 divides by the batch's own count (torchvision).
    _C.MODEL.RETINANET.LOSS_NORMALIZER_MOMENTUM = 0.9
    # Inference.
    _C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
    _C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000  # per level
    _C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5  # IoU above which a lower-scored box is suppressed

    _C.MODEL.POSTPROCESSOR = CN()
    _C.MODEL.POSTPROCESSOR.NAME = "RetinaNetPostProcessor"  # POSTPROCESSOR_REGISTRY name
    # "batched" (per-class NMS), "agnostic" (class-agnostic NMS) or "soft" (per-class soft-NMS).
    _C.MODEL.POSTPROCESSOR.NMS_TYPE = "batched"
    _C.MODEL.POSTPROCESSOR.SOFT_NMS_METHOD = "gaussian"  # "linear" or "gaussian"
    _C.MODEL.POSTPROCESSOR.SOFT_NMS_SIGMA = 0.5  # gaussian soft-NMS decay: score *= exp(-IoU^2 / sigma)
    # Soft-NMS drops boxes whose decayed score falls below this.
    _C.MODEL.POSTPROCESSOR.SOFT_NMS_SCORE_THRESH = 0.001
    # Use the pure-torch reference ops when the compiled extension is missing (slow; off by default).
    _C.MODEL.POSTPROCESSOR.ALLOW_REFERENCE_OPS = False
    # Drop candidates whose clipped box has zero width or height (or NaN coordinates, e.g. from
    # inf/huge box deltas) before NMS, as detectron2's nonempty() filter; False keeps them (torchvision).
    _C.MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES = True
