"""Expotion (ISMIR 2025): the visual embedding (§3.1) and the prefix adaptor (§3.2) on a frozen MusicGen."""
from expotion.methods.expotion.export import METHOD, build_adaptor
from expotion.methods.registry import Method, register_method
from expotion.musicgen.loading import model_signature


def load_expotion(path, payload: dict, musicgen):
    """The adaptor of an exported ``adaptor.pt``, attached to ``musicgen``'s LM."""
    return build_adaptor(path, payload, musicgen.lm, model_signature(musicgen))


register_method(Method(METHOD, "Expotion", module="expotion.methods.expotion.module.ExpotionModule",
                       export_name="adaptor.pt", weight_prefix="adaptor.", load=load_expotion))
