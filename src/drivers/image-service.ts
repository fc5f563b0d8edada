// The image service as vmsnap needs it (Glance v2 is the first implementation).
// Errors are VmsnapError: ImageServiceUnavailable (retryable: network, 5xx, 503),
// ImageServiceError (4xx that no retry fixes), ImageNotFound, ImageConflict.

export type ImageStatus = 'queued' | 'saving' | 'uploading' | 'importing' | 'active' | 'killed' | 'deleted' | 'pending_delete' | 'deactivated';

export interface Image {
  id: string;
  name: string;
  status: ImageStatus;
  visibility: string;
  size: number | null;
  checksum: string | null; // md5, hex (Glance's; vmsnap checks os_hash_value)
  os_hash_algo: string | null; // 'sha512'
  os_hash_value: string | null; // hex
  disk_format: string | null;
  container_format: string | null;
  protected: boolean;
  /** Every other field Glance returns: extra properties are top-level in Glance v2. */
  [property: string]: unknown;
}

export interface NewImage {
  /** Chosen by vmsnap so a retried create is recognised (Glance answers 409 for a known id). */
  id: string;
  name: string;
  visibility: 'private' | 'shared' | 'community' | 'public';
  min_disk: number;
  min_ram: number;
  /** Set at creation when known (Glance takes data only once both are set). */
  disk_format?: string;
  container_format?: string;
  /** Extra properties, string values (image_type, instance_uuid, owner, user_id, ...). */
  properties: Record<string, string>;
  /** Image tags: vmsnap tags its images so it can find them again without listing all. */
  tags?: string[];
  /** Glance's os_hidden: left out of image lists unless asked for (a set's data disk images). */
  hidden?: boolean;
}

export interface UploadResult {
  /** Bytes sent, and the sha512 of exactly those bytes (Glance's os_hash_value), computed while streaming. */
  size: number;
  sha512: string;
}

/** Image data made as it is sent. */
export interface UploadStream {
  /** Exactly the bytes `chunks` produces (the Content-Length). */
  size: number;
  /** The data, from its start; called again for a second sending (after a 401). */
  chunks(): AsyncIterable<Buffer>;
  /** What it is, for messages. */
  description: string;
}

export interface DownloadResult {
  /** Bytes written, and the sha512 of exactly those bytes, computed while streaming. */
  size: number;
  sha512: string;
}

export interface DownloadOptions {
  /** What Glance says the data is (size, os_hash_value): checked as it streams and at the end. */
  expected: { size: number; sha512: string };
  onProgress?: (bytesReceived: number) => void;
  signal?: AbortSignal;
}

export interface ImageService {
  /** Creates a queued image. When the id exists already: returns it with created=false. */
  createImage(image: NewImage): Promise<{ image: Image; created: boolean }>;
  /** undefined when there is no such image (404). */
  getImage(id: string): Promise<Image | undefined>;
  /** Every image that carries the tag (all pages). */
  listImagesByTag(tag: string): Promise<Image[]>;
  /**
   * Every image matching all the filters (all pages): Glance's list filters, e.g. tag, status, or
   * an extra property such as base_image_ref. Callers re-check what matters: a filter Glance does
   * not know may be ignored rather than refused.
   */
  listImages(filters: Record<string, string>): Promise<Image[]>;
  /** JSON-patch replace/add of top-level fields (disk_format, container_format, properties). */
  updateImage(id: string, changes: Record<string, string | number | null>): Promise<Image>;
  /** Streams a local file as the image data (never held in memory); a fresh stream per call. */
  uploadFile(id: string, path: string, onProgress?: (bytesSent: number, bytesTotal: number) => void, signal?: AbortSignal): Promise<UploadResult>;
  /**
   * Sends the data a stream produces (an image made as it is sent), hashed on the way. An error of
   * the stream itself is thrown as it is; a stream that produces another size than it announced
   * fails the upload (ImageServiceError).
   */
  uploadStream(id: string, data: UploadStream, onProgress?: (bytesSent: number, bytesTotal: number) => void, signal?: AbortSignal): Promise<UploadResult>;
  /**
   * Streams the image data into a new private file at `path` (replaced if there), hashing sha512
   * on the way. Bytes that differ from `expected` (size or sha512): ImageCorrupt, file removed.
   * A download that fails for another reason removes the file too.
   */
  downloadFile(id: string, path: string, opts: DownloadOptions): Promise<DownloadResult>;
  /** Deletes the image; resolves also when it is gone already. */
  deleteImage(id: string): Promise<void>;
}
