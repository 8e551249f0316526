"""Music for a video, or for every clip of a cached split, on one or many processes.

The library API behind ``expotion generate``, for notebooks and the app::

    models = load_models(ModelSettings(checkpoint=Path("runs/x/adaptor.pt"), profile="tiny"))
    result = generate_for_video(models, Path("v.mp4"), "slow jazz", Path("out.wav"), sampling=SamplingSettings(seed=3))
"""
from expotion.inference.batch import BatchResult, Prompts, generate_for_cache
from expotion.inference.models import Models, ModelSettings, SamplingSettings, load_models
from expotion.inference.single import VideoResult, generate_for_video

__all__ = ["BatchResult", "Models", "ModelSettings", "Prompts", "SamplingSettings", "VideoResult", "generate_for_cache",
           "generate_for_video", "load_models"]
