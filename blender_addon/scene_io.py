"""The one place that converts between the backend's numpy arrays and Blender data.

Axes: the backend speaks glTF (+Y up, front +Z); Blender is +Z up. Points are converted as
Blender's glTF importer does, (x, y, z) -> (x, -z, y). Arrays are written with
``foreach_set`` (never per-vertex Python loops); faces through the ``.corner_vert`` attribute.
UVs stay with the origin at the bottom-left (Blender's and the backend's convention). Images
arrive as PNG bytes and are packed from them; live texture previews write pixels unpacked.
"""
from __future__ import annotations

import math

import bpy
import numpy as np

COLLECTION = "Splatsmith"
POINTS_GROUP = "Splatsmith Points"

#: Largest arrays applied to the scene (a result larger than this is refused, not applied).
MAX_VERTICES = 20_000_000
MAX_FACES = 20_000_000
MAX_IMAGE_SIDE = 16384


class SceneDataError(ValueError):
    """Arrays from the backend that cannot be applied to Blender data (wrong dtype, shape,
    index range, or non-finite values). Raised before any Blender data is touched."""


def _array(name: str, value, kinds: str, ndim: int, last: tuple[int, ...] | None = None,
           max_rows: int | None = None) -> np.ndarray:
    """``value`` as a numpy array checked for dtype kind (``"f"``, ``"iu"``...), rank, trailing
    dimensions and row count, and finite when floating. Raises SceneDataError."""
    arr = np.asarray(value)
    if arr.dtype.kind not in kinds:
        raise SceneDataError(f"the backend sent {name} of dtype {arr.dtype}, not a {'float' if kinds == 'f' else 'integer'} array")
    if arr.ndim != ndim or (last is not None and tuple(arr.shape[1:]) != last):
        want = "[N" + "".join(f", {d}" for d in (last or ())) + "]"
        raise SceneDataError(f"the backend sent {name} of shape {list(arr.shape)}, expected {want}")
    if max_rows is not None and len(arr) > max_rows:
        raise SceneDataError(f"the backend sent {len(arr)} rows of {name}; at most {max_rows} are applied")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise SceneDataError(f"the backend sent {name} with NaN or infinite values")
    return arr


def check_points(means, rgb, opacity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a Gaussian preview (means float [N, 3], rgb uint8 [N, 3], opacity float [N])."""
    means = _array("point positions", means, "f", 2, (3,), MAX_VERTICES)
    rgb = _array("point colours", rgb, "iu", 2, (3,), MAX_VERTICES)
    opacity = _array("point opacities", opacity, "f", 1, None, MAX_VERTICES)
    if not len(means) == len(rgb) == len(opacity):
        raise SceneDataError(f"the backend sent {len(means)} points but {len(rgb)} colours and {len(opacity)} opacities")
    return means, rgb, opacity


def check_mesh(vertices, faces, uv=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate a mesh (vertices float [V, 3], faces int [F, 3] indexing 0..V-1, optional uv
    float [V, 2]); raises SceneDataError before Blender sees an out-of-range index (which
    crashes it)."""
    vertices = _array("vertices", vertices, "f", 2, (3,), MAX_VERTICES)
    faces = _array("faces", faces, "iu", 2, (3,), MAX_FACES)
    if len(faces) and (int(faces.min()) < 0 or int(faces.max()) >= len(vertices)):
        raise SceneDataError(f"the backend sent faces indexing vertex {int(faces.max()) if len(faces) else 0} "
                             f"(or below 0) of a mesh with {len(vertices)} vertices")
    if uv is not None:
        uv = _array("UVs", uv, "f", 2, (2,), MAX_VERTICES)
        if len(uv) != len(vertices):
            raise SceneDataError(f"the backend sent {len(uv)} UVs for {len(vertices)} vertices")
    return vertices, faces, uv


def check_polygons(polygons, sizes, vertex_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate polygons (corner indices int [N] into ``vertex_count`` vertices, ``sizes`` int [P]
    of at least 3 summing to N); raises SceneDataError before Blender sees them."""
    polygons = _array("polygons", polygons, "iu", 1, None, 4 * MAX_FACES)
    sizes = _array("polygon sizes", sizes, "iu", 1, None, MAX_FACES)
    if len(sizes) and (int(sizes.min()) < 3 or int(sizes.sum()) != len(polygons)):
        raise SceneDataError(f"the backend sent {len(sizes)} polygon sizes (each at least 3) that do not add up to "
                             f"their {len(polygons)} corners")
    if len(polygons) and (int(polygons.min()) < 0 or int(polygons.max()) >= vertex_count):
        raise SceneDataError(f"the backend sent polygons indexing vertex {int(polygons.max())} (or below 0) of a mesh "
                             f"with {vertex_count} vertices")
    return polygons, sizes


def check_rgba(rgba) -> np.ndarray:
    """Validate an image uint8 [H, W, 4]."""
    arr = np.asarray(rgba)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 4 or not (0 < arr.shape[0] <= MAX_IMAGE_SIDE
                                                                              and 0 < arr.shape[1] <= MAX_IMAGE_SIDE):
        raise SceneDataError(f"the backend sent an image of dtype {arr.dtype} and shape {list(arr.shape)}, "
                             "expected uint8 [H, W, 4]")
    return arr


#: Blender axes -> glTF axes, (x, y, z) -> (x, z, -y); orthonormal, so its transpose is the inverse.
BLENDER_TO_GLTF = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], np.float32)


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
    """float [N, 3] glTF axes -> Blender axes: (x, y, z) -> (x, -z, y)."""
    return np.ascontiguousarray(np.asarray(points, np.float32) @ BLENDER_TO_GLTF)


def collection() -> bpy.types.Collection:
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION)
        bpy.context.scene.collection.children.link(coll)
    return coll


def _object(name: str) -> bpy.types.Object:
    obj = bpy.data.objects.get(name)
    if obj is None:
        mesh = bpy.data.meshes.new(name)
        obj = bpy.data.objects.new(name, mesh)
        collection().objects.link(obj)
    return obj


def _set_geometry(mesh: bpy.types.Mesh, vertices: np.ndarray, faces: np.ndarray | None,
                  sizes: np.ndarray | None = None) -> None:
    """``faces``: triangles int [F, 3], or with ``sizes`` int [P] the polygons' corners flat."""
    mesh.clear_geometry()
    verts = gltf_to_blender(vertices)
    mesh.vertices.add(len(verts))
    mesh.attributes["position"].data.foreach_set("vector", verts.ravel())  # faster than vertices' "co"
    if faces is not None and len(faces):
        f = np.asarray(faces, dtype=np.int32).ravel()
        sizes = np.full(f.size // 3, 3, np.int32) if sizes is None else np.asarray(sizes, np.int32)
        mesh.loops.add(f.size)
        mesh.polygons.add(len(sizes))
        mesh.polygons.foreach_set("loop_start", (np.cumsum(sizes) - sizes).astype(np.int32))
        mesh.attributes[".corner_vert"].data.foreach_set("value", f)
    mesh.update()


def _points_group() -> bpy.types.NodeTree:
    group = bpy.data.node_groups.get(POINTS_GROUP)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(POINTS_GROUP, "GeometryNodeTree")
    group.interface.new_socket(name="Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket(name="Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes = group.nodes
    inp, out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    to_points.inputs["Radius"].default_value = 0.006
    group.links.new(inp.outputs[0], to_points.inputs["Mesh"])
    group.links.new(to_points.outputs["Points"], out.inputs[0])
    return group


def apply_gaussian_preview(name: str, means: np.ndarray, rgb: np.ndarray, opacity: np.ndarray) -> bpy.types.Object:
    """Show a Gaussian preview as coloured points (a vertex-only mesh turned into points by a
    geometry-nodes modifier, with a ``Col`` point colour attribute), updated in place.

    Args:
        means: float32 [N, 3] glTF axes; rgb: uint8 [N, 3]; opacity: float32 [N] in [0, 1].
    Raises:
        SceneDataError: malformed arrays (nothing in the scene changes).
    """
    means, rgb, opacity = check_points(means, rgb, opacity)
    obj = _object(name)
    mesh = obj.data
    _set_geometry(mesh, means, None)
    colour = mesh.color_attributes.get("Col") or mesh.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
    rgba = np.concatenate([np.asarray(rgb, np.float32) / 255.0, np.asarray(opacity, np.float32)[:, None]], 1)
    colour.data.foreach_set("color", rgba.ravel())
    mesh.color_attributes.active_color = colour
    if "Points" not in obj.modifiers:
        modifier = obj.modifiers.new("Points", "NODES")
        modifier.node_group = _points_group()
    return obj


def apply_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
               normals: np.ndarray | None = None, polygons: np.ndarray | None = None,
               polygon_sizes: np.ndarray | None = None) -> bpy.types.Object:
    """Create or update a mesh object. ``uv`` is per-vertex float32 [V, 2] (origin bottom-left);
    ``normals`` per-vertex unit float32 [V, 3] (glTF axes): the mesh is then shaded smooth with
    them as its custom normals (the frame a normal map was baked in, the same across UV seams).
    ``polygons`` int [sum of sizes] with ``polygon_sizes`` int [P] (quads, or any polygons) over
    the same vertices replace the triangles ``faces`` when given.

    Raises:
        SceneDataError: malformed arrays or face indices out of range (nothing changes).
    """
    vertices, faces, uv = check_mesh(vertices, faces, uv)
    sizes = None
    if polygons is not None:
        polygons, sizes = check_polygons(polygons, polygon_sizes, len(vertices))
        faces = polygons
    if normals is not None:
        normals = _array("normals", normals, "f", 2, (3,), MAX_VERTICES)
        if len(normals) != len(vertices):
            raise SceneDataError(f"the backend sent {len(normals)} normals for {len(vertices)} vertices")
    obj = _object(name)
    mesh = obj.data
    if "Points" in obj.modifiers:
        obj.modifiers.remove(obj.modifiers["Points"])
    _set_geometry(mesh, vertices, faces, sizes)
    if uv is not None:  # a FLOAT2 corner attribute is a UV map; its foreach_set is ~4x faster than uv_layers'
        layer = mesh.attributes.get("UVMap") or mesh.attributes.new("UVMap", "FLOAT2", "CORNER")
        layer.data.foreach_set("vector", np.asarray(uv, np.float32)[np.asarray(faces).ravel()].ravel())  # per corner
    if normals is not None and len(faces):
        mesh.shade_smooth()
        mesh.normals_split_custom_set_from_vertices(gltf_to_blender(np.asarray(normals, np.float32)))
    return obj


def image_from_rgba(name: str, rgba: np.ndarray) -> bpy.types.Image:
    """A Blender image from uint8 [H, W, 4] (row 0 at the top), updated in place, not packed
    (for live previews). Raises SceneDataError for a malformed image."""
    rgba = check_rgba(rgba)
    h, w = rgba.shape[:2]
    image = bpy.data.images.get(name)
    if image is None or tuple(image.size) != (w, h):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(name, w, h, alpha=True)
    pixels = np.flipud(np.asarray(rgba, np.float32) / 255.0)  # Blender's row 0 is the bottom
    image.pixels.foreach_set(pixels.ravel())
    image.update()
    return image


def show_in_image_editors(image: bpy.types.Image) -> int:
    """Show ``image`` in every open Image Editor that is not pinned to another image (an artist's
    pinned editor keeps its image); returns how many editors show it. Without an open editor
    (or headless) the image is still in ``bpy.data.images`` to pick."""
    shown = 0
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type != "IMAGE_EDITOR":
                continue
            space = area.spaces.active
            if space.use_image_pin and space.image is not None and space.image != image:
                continue
            space.image = image
            area.tag_redraw()
            shown += 1
    return shown


def packed_image_from_png(name: str, png: bytes) -> bpy.types.Image:
    """A Blender image packed into the .blend from PNG bytes received from the backend (packed
    from memory, as Blender's glTF importer does: no temporary file). Raises SceneDataError
    for bytes that are not a PNG."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise SceneDataError("the backend sent a texture that is not a PNG file")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # PNG IHDR
    image = bpy.data.images.new(name, max(width, 1), max(height, 1), alpha=True)
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    image.filepath_raw = f"//{name}.png"
    return image


def assign_texture(obj: bpy.types.Object, image: bpy.types.Image, material_name: str) -> bpy.types.Material:
    """A Principled BSDF material whose base colour is ``image``, on the object's first slot."""
    material = bpy.data.materials.get(material_name) or bpy.data.materials.new(material_name)
    if material.node_tree is None:  # Blender < 5.0 creates materials without nodes
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None) or nodes.new("ShaderNodeBsdfPrincipled")
    tex = next((n for n in nodes if n.type == "TEX_IMAGE"), None) or nodes.new("ShaderNodeTexImage")
    tex.image = image
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if obj.data.materials:
        obj.data.materials[0] = material
    else:
        obj.data.materials.append(material)
    return material


def add_normal_map(material: bpy.types.Material, image: bpy.types.Image, uv_name: str = "UVMap") -> None:
    """Wire a tangent-space normal map into the material's Principled BSDF: an image node (the
    image read as non-colour data) into a Normal Map node (tangent space, on ``uv_name``, whose
    tangents Blender computes with MikkTSpace, as the map was baked for) into the BSDF's Normal."""
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None) or nodes.new("ShaderNodeBsdfPrincipled")
    image.colorspace_settings.name = "Non-Color"
    tex = next((n for n in nodes if n.type == "TEX_IMAGE" and n.label == "Normal"), None) or nodes.new("ShaderNodeTexImage")
    tex.label, tex.image = "Normal", image
    node = next((n for n in nodes if n.type == "NORMAL_MAP"), None) or nodes.new("ShaderNodeNormalMap")
    node.space, node.uv_map = "TANGENT", uv_name
    links.new(tex.outputs["Color"], node.inputs["Color"])
    links.new(node.outputs["Normal"], bsdf.inputs["Normal"])


def add_metallic_roughness(material: bpy.types.Material, image: bpy.types.Image) -> None:
    """Wire glTF's metallic-roughness map (G roughness, B metallic, non-colour data) into the
    material's Principled BSDF through a Separate Color node, as Blender's glTF importer does."""
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None) or nodes.new("ShaderNodeBsdfPrincipled")
    image.colorspace_settings.name = "Non-Color"
    tex = next((n for n in nodes if n.type == "TEX_IMAGE" and n.label == "Metallic Roughness"), None) \
        or nodes.new("ShaderNodeTexImage")
    tex.label, tex.image = "Metallic Roughness", image
    split = next((n for n in nodes if n.type == "SEPARATE_COLOR"), None) or nodes.new("ShaderNodeSeparateColor")
    links.new(tex.outputs["Color"], split.inputs["Color"])
    links.new(split.outputs["Green"], bsdf.inputs["Roughness"])
    links.new(split.outputs["Blue"], bsdf.inputs["Metallic"])


def remove_object(name: str) -> None:
    obj = bpy.data.objects.get(name)
    if obj is not None:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)


def remove_preview(name: str) -> None:
    """Remove a job's preview object with its preview material and texture image."""
    remove_object(name)
    material = bpy.data.materials.get(f"{name} material")
    if material is not None and material.users == 0:
        bpy.data.materials.remove(material)
    image = bpy.data.images.get(f"{name} texture")
    if image is not None and image.users == 0:
        bpy.data.images.remove(image)


def rgba_from_image(image: bpy.types.Image) -> np.ndarray:
    """uint8 [H, W, 4], row 0 at the top, from a Blender image (file or already in the .blend)."""
    w, h = image.size
    pixels = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return (np.flipud(pixels.reshape(h, w, 4)).clip(0, 1) * 255 + 0.5).astype(np.uint8)


def mask_from_rgba(rgba: np.ndarray) -> np.ndarray:
    """A foreground mask uint8 [H, W] (255 = object) from a mask image uint8 [H, W, 4]: white
    (luminance above half) where the object is; a transparent pixel is background."""
    luminance = rgba[..., :3].astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    return ((luminance > 127.5) & (rgba[..., 3] > 127)).astype(np.uint8) * 255


def load_image_file(path: str) -> np.ndarray:
    """uint8 [H, W, 4] from an image file, read by Blender (the image is removed afterwards).

    Raises:
        RuntimeError: Blender cannot read the file as an image.
    """
    image = bpy.data.images.load(path, check_existing=False)
    try:
        if image.size[0] == 0 or image.size[1] == 0:  # Blender "loads" a file it cannot decode, empty
            raise RuntimeError("it has no pixels Blender can decode")
        return rgba_from_image(image)
    finally:
        bpy.data.images.remove(image)


# ---------------------------------------------------------------------------------- refinement
def blender_to_gltf(points: np.ndarray) -> np.ndarray:
    """float [N, 3] Blender axes -> glTF axes: the inverse of :func:`gltf_to_blender`."""
    return np.asarray(points, np.float32) @ BLENDER_TO_GLTF.T


def orbit_angles_of_camera(matrix_world) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of the orbit view a Blender camera looks from, in the
    backend's convention (``shared_protocol.views``): from its viewing direction alone (its -Z
    axis), so a camera need not aim at any particular point. A generated asset faces -Y in
    Blender, so a camera on -Y looking along +Y is azimuth 0, one on +X looking along -X is
    azimuth 90 (the object's left side), one above looking down has a positive elevation.

    Raises:
        ValueError: a camera matrix without a direction (a zero scale)."""
    m = np.asarray(matrix_world, np.float64)
    toward_camera = m[:3, 2]  # the camera's +Z: from what it looks at back to the camera
    norm = float(np.linalg.norm(toward_camera))
    if norm < 1e-9:
        raise ValueError("the camera has no viewing direction (is its scale zero?)")
    x, y, z = blender_to_gltf((toward_camera / norm)[None])[0].astype(np.float64)
    elevation = math.degrees(math.asin(max(-1.0, min(1.0, y))))
    azimuth = math.degrees(math.atan2(x, z)) if abs(elevation) < 89.999 else 0.0
    return round(azimuth, 4), round(elevation, 4)


def evaluated_mesh_arrays(obj: bpy.types.Object, depsgraph) -> dict:
    """The object's evaluated mesh (modifiers applied), triangulated, in object space, glTF axes.

    Returns a dict: ``vertices`` float32 [V, 3]; ``faces`` int32 [T, 3]; ``uv`` float32 [T*3, 2]
    per triangle corner from the active UV map, or None; ``uv_name`` its name; ``tri_loops``
    int64 [T*3], the loop of each triangle corner (to write UVs back); ``same_topology``: the
    evaluated mesh has the original's loops (no topology-changing modifier).
    """
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        n_vert, n_tri = len(mesh.vertices), len(mesh.loop_triangles)
        co = np.empty(n_vert * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        tris = np.empty(n_tri * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", tris)
        loops = np.empty(n_tri * 3, np.int32)
        mesh.loop_triangles.foreach_get("loops", loops)
        uv, uv_name = None, ""
        layer = mesh.uv_layers.active
        if layer is not None:
            per_loop = np.empty(len(mesh.loops) * 2, np.float32)
            layer.data.foreach_get("uv", per_loop)
            uv, uv_name = per_loop.reshape(-1, 2)[loops], layer.name
        same = len(mesh.loops) == len(obj.data.loops) and len(mesh.vertices) == len(obj.data.vertices)
    finally:
        evaluated.to_mesh_clear()
    return {"vertices": blender_to_gltf(co.reshape(-1, 3)), "faces": tris.reshape(-1, 3), "uv": uv, "uv_name": uv_name,
            "tri_loops": loops.astype(np.int64), "same_topology": same}


def camera_in_object_space(obj: bpy.types.Object, camera_matrix_world, fovy_deg: float) -> np.ndarray:
    """A Blender camera (or viewport) ``matrix_world`` as camera-to-world float32 [4, 4] in the
    object's space, glTF axes, OpenGL camera axes (the backend's convention)."""
    local = np.array(obj.matrix_world.inverted() @ camera_matrix_world, np.float32)
    out = local.copy()
    out[:3, :] = BLENDER_TO_GLTF @ local[:3, :]
    return out


def camera_fovy(camera: bpy.types.Object, width: int, height: int) -> float:
    """Vertical field of view in degrees of a Blender camera rendering ``width`` x ``height``
    (sensor fit AUTO fits the larger side)."""
    import math

    data = camera.data
    if data.type != "PERSP":
        raise ValueError(f"the camera {camera.name!r} is {data.type.lower()}; use a perspective camera")
    fit = data.sensor_fit
    if fit == "VERTICAL" or (fit == "AUTO" and height > width):
        sensor = data.sensor_height if fit == "VERTICAL" else data.sensor_width
        return math.degrees(2 * math.atan(sensor / (2 * data.lens)))
    fovx = 2 * math.atan(data.sensor_width / (2 * data.lens))
    return math.degrees(2 * math.atan(math.tan(fovx / 2) * height / width))


def base_color_image(obj: bpy.types.Object) -> tuple[bpy.types.Image | None, bpy.types.Node | None]:
    """The image feeding the Base Color of the active material's Principled BSDF, and its node."""
    material = obj.active_material
    if material is None or material.node_tree is None:
        return None, None
    for node in material.node_tree.nodes:
        if node.type == "BSDF_PRINCIPLED":
            socket = node.inputs["Base Color"]
            if socket.is_linked and socket.links[0].from_node.type == "TEX_IMAGE":
                tex = socket.links[0].from_node
                return tex.image, tex
    return None, None


def set_corner_uv(mesh: bpy.types.Mesh, name: str, corner_uv: np.ndarray, tri_loops: np.ndarray) -> None:
    """Write per-triangle-corner UVs float [T*3, 2] to the UV map ``name`` through the loops
    the triangles came from (geometry untouched). Raises SceneDataError."""
    corner_uv = _array("UVs", corner_uv, "f", 2, (2,))
    tri_loops = np.asarray(tri_loops).reshape(-1)
    if len(corner_uv) != len(tri_loops) or (len(tri_loops) and (tri_loops.min() < 0 or tri_loops.max() >= len(mesh.loops))):
        raise SceneDataError(f"the backend sent {len(corner_uv)} corner UVs for {len(tri_loops)} triangle corners")
    per_loop = np.zeros((len(mesh.loops), 2), np.float32)
    per_loop[tri_loops] = corner_uv
    layer = mesh.attributes.get(name) or mesh.attributes.new(name, "FLOAT2", "CORNER")
    layer.data.foreach_set("vector", per_loop.ravel())


def textured_material(name: str, image: bpy.types.Image, uv_name: str) -> bpy.types.Material:
    """A Principled BSDF material whose base colour is ``image`` read through the UV map ``uv_name``."""
    material = bpy.data.materials.new(name)
    if material.node_tree is None:
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    uvmap = nodes.new("ShaderNodeUVMap")
    uvmap.uv_map = uv_name
    links.new(uvmap.outputs["UV"], tex.inputs["Vector"])
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def write_pixels(image: bpy.types.Image, rgba: np.ndarray) -> None:
    """Replace an existing image's pixels with uint8 [H, W, 4] (row 0 at the top), resizing it.
    Raises SceneDataError."""
    rgba = check_rgba(rgba)
    h, w = rgba.shape[:2]
    if tuple(image.size) != (w, h):
        image.scale(w, h)
    image.pixels.foreach_set((np.flipud(np.asarray(rgba, np.float32)) / 255.0).ravel())
    image.update()
